"""Fit the test MLP with ``TMPISync(..., record=RUN_DIR)`` and keep the
batch logs Keras reported, to compare with the records.

``mpiexec -n P python keras_record.py --out DIR --run-dir RUN_DIR``; each
rank writes ``DIR/rank{r}.json`` with its batch logs per fit. With
``--configs`` one job runs several configurations in turn (tests/mpirun.py's
``run_mpi_configs``).
"""

import argparse
import json
import os

import keras

import tmpi_adapters.keras as tmpi_keras
from kmodels import compile_model, make_data, make_model, make_optimizer
from mpirun import fit_each_config

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--run-dir", required=True)
p.add_argument("--batch", type=int, default=8, help="per rank")
p.add_argument("--n", type=int, default=160)
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--fits", type=int, default=1)
p.add_argument("--rule", default="bsp")
p.add_argument("--options", default="{}", help="JSON options of --rule")


def fit(args):
    """One configuration: fit, write DIR/rank{r}.json."""
    rank = tmpi_keras.rank()
    x, y = tmpi_keras.shard(make_data(args.n))
    model = compile_model(make_model(100 + rank), make_optimizer("adam"))
    fits = []
    keep = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs=None: fits[-1].append(dict(logs)))
    sync = tmpi_keras.TMPISync(args.rule, record=args.run_dir,
                               **json.loads(args.options))
    for _ in range(args.fits):
        fits.append([])
        model.fit(x, y, batch_size=args.batch, epochs=args.epochs,
                  shuffle=False, callbacks=[sync, keep], verbose=0)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"batch_logs": fits,
                   "summary": sync.rule.recorder.summary}, f)


fit_each_config(p, fit, tmpi_keras.rank)
