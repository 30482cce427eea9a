"""Train the test classifier through a graph adapter with a Checkpointer.

``mpiexec -n P python graph_ckpt.py --lib theano|pytensor --entry
grads|updates --out DIR --ckpt CKPT [--kill EPOCH:STEP]``: resumes from CKPT
when it holds a checkpoint, saves after every epoch; ``--kill`` makes the
last rank SIGKILL itself there. Each rank writes ``DIR/rank{r}.json``.
With ``--configs`` one job runs several configurations in turn
(tests/mpirun.py's ``run_mpi_configs``).
"""

import argparse
import importlib
import json
import os
import signal
import sys
import time

import numpy as np

from gmodels import build
from kmodels import make_data
from tmpi_core import Interrupted, get_context, shard
from mpirun import fit_each_config, note_errors_per_rank  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--ckpt", required=True)
p.add_argument("--lib", default="pytensor")
p.add_argument("--entry", default="updates")
p.add_argument("--optimizer", default="momentum")
p.add_argument("--rule", default="bsp")
p.add_argument("--options", default="{}")
p.add_argument("--epochs", type=int, default=4)
p.add_argument("--steps", type=int, default=5, help="per epoch")
p.add_argument("--batch", type=int, default=8)
p.add_argument("--kill", default=None, metavar="EPOCH:STEP")
p.add_argument("--mark", default=None, metavar="EPOCH:STEP",
               help="rank 0 writes DIR/marker there (the test then sends "
               "SIGINT to the launcher)")
p.add_argument("--slow", type=float, default=0.0, help="sleep per step")


def fit(args):
    """One configuration: train (resuming from --ckpt), write
    DIR/rank{r}.json."""
    ctx = get_context()
    dist = importlib.import_module(
        "tmpi_adapters.lasagne" if args.lib == "theano"
        else "tmpi_adapters.pytensor")
    x, y = make_data(args.steps * args.batch * ctx.size)
    x, y = shard((x, y), ctx.rank, ctx.size)
    options = json.loads(args.options)
    train, params, updates = build(args.lib, args.optimizer,
                                   100 + ctx.rank, entry=args.entry, dist=dist,
                                   rule=args.rule, options=options)
    # after the graph is built: PyTensor and Theano replace sys.excepthook
    note_errors_per_rank(args.out, ctx.rank)
    ckpt = dist.Checkpointer(updates, args.ckpt)
    start = ckpt.restore()
    kill = tuple(map(int, args.kill.split(":"))) if args.kill else None
    served = args.entry == "updates" and ckpt.serve(every_exchanges=4)
    for epoch in range(start, 0 if served else args.epochs):
        for k in range(args.steps):
            if (epoch, k) == kill and ctx.rank == ctx.size - 1:
                with open(os.path.join(args.out, "killed_at"), "w") as f:
                    f.write(repr(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)
            sl = slice(k * args.batch, (k + 1) * args.batch)
            train(x[sl].astype(params[0].dtype), y[sl].astype(np.int32))
            if args.mark and ctx.rank == 0 \
                    and (epoch, k) == tuple(map(int, args.mark.split(":"))):
                with open(os.path.join(args.out, "marker"), "w") as f:
                    f.write("ready")
            time.sleep(args.slow)
            if ckpt.stop_requested():
                ckpt.save(epoch=epoch, batch=k + 1, interrupted=True)
                raise Interrupted(f"stopped at epoch {epoch} step {k}")
        if ckpt.rule.role == "peer":
            ckpt.save(epoch=epoch + 1)
    if args.entry == "updates":
        updates.finalize()
    with open(os.path.join(args.out, f"rank{ctx.rank}.json"), "w") as f:
        json.dump({"params": [p.get_value().tolist() for p in params],
                   "start": start}, f)


fit_each_config(p, fit, lambda: get_context().rank)
