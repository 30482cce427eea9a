"""Bad input on real ranks: ``mpiexec -n P python bad_input.py --case CASE``.

Every case that must fail prints ``case CASE rank R: <Error>: <message>``
on each rank that raised, waits for the others and exits 3 (no abort, so
the test sees every rank's line). A case that must work prints
``case CASE rank R: ok ...`` and exits 0.

Core cases (numpy + mpi4py only):

``shapes``, ``dtypes``, ``count``: rank 1 holds a different model
(``rule.start``). ``options``: rank 1 asks for another BSP mode.
``version``: rank 1 runs another tmpi version (the string the rule's
configuration reports). ``gradients``: gradients of different shapes on
the first exchange (no ``start``). ``empty``: no samples to shard.
``tiny``: fewer samples than ranks. ``uneven``: 11 samples on 3 ranks
(works: equal shards, equal steps, exact averages).

``keras``: Keras sub-cases one after another in one launch (Keras takes
seconds to import): ``optimizer`` (rank 1 uses Adam), ``metrics`` (rank 1
compiles no accuracy metric), ``validation`` (validation data on rank 0
only), ``eval-steps`` (rank 1 has more validation data), ``options``
(rank 1 averages parameters), ``empty`` (no training samples anywhere).
"""

import argparse

import numpy as np

import tmpi_core
import tmpi_core.rules.base
from tmpi_core import get_context, make_rule, shard

p = argparse.ArgumentParser()
p.add_argument("--case", required=True)
args = p.parse_args()
ctx = get_context()
rank = ctx.rank
failed = []


def say(line):
    # one write per line, so the launcher never splices two ranks' lines
    print(line + "\n", end="", flush=True)


def attempt(name, action):
    """Run ``action``; print its outcome as ``case NAME rank R: ...``."""
    try:
        outcome = action()
    except (ValueError, StopIteration) as e:
        # StopIteration: Keras' own error for no data on JAX (ValueError
        # on the other backends)
        say(f"case {name} rank {rank}: {type(e).__name__}: {e}")
        failed.append(name)
    else:
        say(f"case {name} rank {rank}: ok {outcome}")
    ctx.barrier()


def start_bsp(params, **options):
    make_rule("bsp", **options).start(params)


def core_case(case):
    two = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    if case == "shapes":
        if rank == 1:
            two[1] = np.zeros(4, np.float32)
        start_bsp(two)
    elif case == "dtypes":
        if rank == 1:
            two[0] = two[0].astype(np.float64)
        start_bsp(two)
    elif case == "count":
        start_bsp(two + [np.zeros(1, np.float32)] if rank == 1 else two)
    elif case == "options":
        start_bsp(two, mode="params" if rank == 1 else "grads")
    elif case == "version":
        if rank == 1:
            tmpi_core.rules.base.__version__ = "0.0.0-other"
        start_bsp(two)
    elif case == "gradients":
        grads = [np.ones((2, 3 + rank), np.float32)]
        make_rule("bsp").on_gradients(grads)
    elif case == "empty":
        shard((np.zeros((0, 4)), np.zeros(0)), rank, ctx.size)
    elif case == "tiny":
        shard((np.zeros((ctx.size - 1, 4)), np.zeros(ctx.size - 1)), rank,
              ctx.size)
    elif case == "uneven":
        x = shard(np.arange(11.0), rank, ctx.size)
        rule = make_rule("bsp")
        rule.start([np.zeros(1)])
        means = []
        for sample in x:                     # one step per local sample
            out = rule.on_gradients([np.array([sample])])
            means.append(float(out[0][0]))
            rule.end_step()
        return f"samples={len(x)} steps={rule.step} means={means}"
    else:
        raise SystemExit(f"unknown case {case!r}")
    return "no error"


def keras_cases():
    import keras

    import tmpi_adapters.keras as tmpi_keras
    from kmodels import compile_model, make_data, make_model, make_optimizer

    x, y = tmpi_keras.shard(make_data(64))

    def fit(optimizer="momentum", metrics=True, validation=None, data=(x, y),
            **options):
        model = make_model(0)
        if metrics:
            compile_model(model, make_optimizer(optimizer))
        else:
            model.compile(optimizer=make_optimizer(optimizer),
                          loss=keras.losses.SparseCategoricalCrossentropy(
                              from_logits=True))
        model.fit(*data, batch_size=8, epochs=2, verbose=0,
                  validation_data=validation,
                  callbacks=[tmpi_keras.TMPISync("bsp", **options)])
        return "trained"

    attempt("optimizer", lambda: fit(
        optimizer="adam" if rank == 1 else "momentum"))
    attempt("metrics", lambda: fit(metrics=rank != 1))
    attempt("validation", lambda: fit(
        validation=make_data(16, seed=1) if rank == 0 else None))
    attempt("eval-steps", lambda: fit(
        validation=make_data(16 if rank == 0 else 40, seed=1)))
    attempt("options", lambda: fit(mode="params" if rank == 1 else "grads"))
    attempt("empty", lambda: fit(data=(x[:0], y[:0])))


if args.case == "keras":
    keras_cases()
else:
    attempt(args.case, lambda: core_case(args.case))
raise SystemExit(3 if failed else 0)
