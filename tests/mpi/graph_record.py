"""Record a graph-adapter run (Theano or PyTensor) on every rank.

``mpiexec -n P python graph_record.py --lib theano|pytensor --entry
updates|grads --run-dir RUN_DIR --out DIR``: ``updates`` records through
``distributed(updates, record=RUN_DIR)`` and ``updates.record(loss=...)``,
``grads`` through a Recorder held by the script. Each rank writes
``DIR/rank{r}.json`` with the losses the compiled function returned.
With ``--configs`` one job runs several configurations in turn
(tests/mpirun.py's ``run_mpi_configs``).
"""

import argparse
import importlib
import json
import os

import numpy as np

from gmodels import graph_modules
from kmodels import make_data
from mpirun import fit_each_config
from tmpi_core import Recorder, get_context, shard

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--run-dir", required=True)
p.add_argument("--lib", default="pytensor")
p.add_argument("--entry", default="updates")
p.add_argument("--steps", type=int, default=8)
p.add_argument("--batch", type=int, default=8, help="per rank")


def fit(args):
    """One configuration: train and record, write DIR/rank{r}.json."""
    ctx = get_context()
    dist = importlib.import_module(
        "tmpi_adapters.lasagne" if args.lib == "theano"
        else "tmpi_adapters.pytensor")
    x, y = shard(make_data(args.steps * args.batch * ctx.size), ctx.rank,
                 ctx.size)
    mod, T = graph_modules(args.lib)
    # A linear model (quick to compile); ranks start apart, the adapter
    # broadcasts rank 0's weights.
    w = mod.shared(np.full(6, 0.1 * ctx.rank, mod.config.floatX), name="w")
    xs, ys = T.matrix("x"), T.vector("y")
    loss = T.mean((T.dot(xs, w) - ys) ** 2)
    if args.entry == "updates":
        updates = dist.distributed([(w, w - 0.05 * T.grad(loss, w))],
                                   record=args.run_dir)

        def record(value):
            updates.record(loss=value, epoch=0, samples=args.batch)

        def finish():
            updates.finalize()
    else:
        recorder = Recorder(args.run_dir)
        grads = dist.distributed_grads(T.grad(loss, [w]), params=[w],
                                       record=recorder)
        updates = [(w, w - 0.05 * grads[0])]

        def record(value):
            recorder.end_step(loss=value)

        def finish():
            recorder.close()

    train = mod.function([xs, ys], loss, updates=updates)
    losses = []
    for k in range(args.steps):
        sl = slice(k * args.batch, (k + 1) * args.batch)
        losses.append(float(train(x[sl].astype(w.dtype),
                                  y[sl].astype(w.dtype))))
        record(losses[-1])
    finish()
    with open(os.path.join(args.out, f"rank{ctx.rank}.json"), "w") as f:
        json.dump({"losses": losses}, f)


fit_each_config(p, fit, lambda: get_context().rank)
