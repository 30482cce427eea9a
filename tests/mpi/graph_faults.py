"""Faults under real ranks for the graph adapters.

``--case mismatch``: rank 1 builds a wider layer; every rank prints
``rank R: <error>`` and exits 3 together. ``--case raise``: rank 1 raises
between two training calls (uncaught); the job must end, not hang.
``--case extra-call``: rank 0 calls the training function once more than
rank 1, which leaves; with ``TMPI_EXCHANGE_TIMEOUT`` set the job ends.
"""

import argparse
import importlib

import numpy as np

from gmodels import graph_modules
from tmpi_core import get_context

p = argparse.ArgumentParser()
p.add_argument("--lib", default="theano")
p.add_argument("--case", required=True)
args = p.parse_args()

ctx = get_context()
mod, T = graph_modules(args.lib)
dist = importlib.import_module(
    "tmpi_adapters.lasagne" if args.lib == "theano" else "tmpi_adapters.pytensor")
width = 17 if (args.case == "mismatch" and ctx.rank == 1) else 16
w = mod.shared(np.zeros((6, width)), name="W")
x = T.matrix("x")
loss = (T.dot(x, w) ** 2).mean()
try:
    updates = dist.distributed([(w, w - 0.1 * T.grad(loss, w))])
except ValueError as e:
    print(f"rank {ctx.rank}: {e}", flush=True)
    ctx.barrier()
    raise SystemExit(3)
train = mod.function([x], loss, updates=updates)
steps = 100
if args.case == "extra-call":
    steps = 4 if ctx.rank == 0 else 3
    ctx.barrier()      # compiling took the ranks unequally long
for step in range(steps):
    if args.case == "raise" and ctx.rank == 1 and step == 3:
        raise RuntimeError("injected failure on rank 1")
    train(np.ones((4, 6)))
