"""Faults and bad input under real ranks: each case must end the job with a
clear message and a non-zero status, never a hang.

``--case raise``: rank 1 raises mid-epoch (uncaught).
``--case mismatch``: rank 1 builds a different model.
``--case uneven``: rank 1 has more data than rank 0 (no sharding).
``--case badoption``: an invalid option on every rank.
Cases that should raise on every rank print ``rank R: <error>`` and exit 3
together (no abort), so the test sees every rank's message.
"""

import argparse

import keras

import tmpi_adapters.keras as tmpi_keras
from kmodels import compile_model, make_data, make_model, make_optimizer
from tmpi_core import get_context

p = argparse.ArgumentParser()
p.add_argument("--case", required=True)
args = p.parse_args()

ctx = get_context()
rank = ctx.rank
x, y = make_data(64)
model = compile_model(make_model(0), make_optimizer("momentum"))

try:
    if args.case == "badoption":
        tmpi_keras.TMPISync("bsp", every=0)       # raises on every rank

    callbacks = [tmpi_keras.TMPISync("bsp")]
    if args.case == "raise":
        def fail(batch, logs=None):
            if rank == 1 and batch == 2:
                raise RuntimeError("injected failure on rank 1")
        callbacks.append(keras.callbacks.LambdaCallback(on_train_batch_end=fail))
        x, y = tmpi_keras.shard((x, y))
    elif args.case == "mismatch":
        x, y = tmpi_keras.shard((x, y))
        if rank == 1:
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(17),
                                      keras.layers.Dense(3)])
            compile_model(model, make_optimizer("momentum"))
    elif args.case == "uneven":
        if rank == 1:
            x, y = make_data(96)

    model.fit(x, y, batch_size=8, epochs=50, verbose=0, callbacks=callbacks)
except ValueError as e:
    print(f"rank {rank}: {e}", flush=True)
    ctx.barrier()
    raise SystemExit(3)
