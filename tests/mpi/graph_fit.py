"""Train the test classifier with a tmpi graph adapter on every rank.

``mpiexec -n P python graph_fit.py --lib theano|pytensor --entry
grads|updates --optimizer adam --out DIR``; each rank writes
``DIR/rank{r}.json`` with its final parameters and losses. With
``--configs`` one job trains several configurations in turn
(tests/mpirun.py's ``run_mpi_configs``).
"""

import argparse
import importlib
import json
import os

import numpy as np

from gmodels import build
from kmodels import make_data
from mpirun import fit_each_config
from tmpi_core import get_context, shard

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--lib", default="theano")
p.add_argument("--entry", default="grads")
p.add_argument("--optimizer", default="adam")
p.add_argument("--every", type=int, default=1)
p.add_argument("--steps", type=int, default=25)
p.add_argument("--batch", type=int, default=8, help="per rank")
p.add_argument("--rule", default="bsp")
p.add_argument("--options", default="{}", help="JSON options of --rule")


def fit(args):
    """One configuration: train, write DIR/rank{r}.json."""
    ctx = get_context()
    dist = importlib.import_module(
        "tmpi_adapters.lasagne" if args.lib == "theano"
        else "tmpi_adapters.pytensor")
    x, y = make_data(args.steps * args.batch * ctx.size)
    x, y = shard((x, y), ctx.rank, ctx.size)
    # Ranks start from different weights: the adapter must broadcast rank 0's.
    options = (dict(every=args.every) if args.rule == "bsp"
               else json.loads(args.options))
    train, params, updates = build(args.lib, args.optimizer,
                                   100 + ctx.rank, entry=args.entry,
                                   dist=dist, rule=args.rule,
                                   options=options)
    initial = [p.get_value().tolist() for p in params]
    losses = []
    served = args.entry == "updates" and updates.serve()
    for k in range(0 if served else args.steps):
        sl = slice(k * args.batch, (k + 1) * args.batch)
        losses.append(float(train(x[sl].astype(params[0].dtype),
                                  y[sl].astype(np.int32))))
    before_finalize = [p.get_value().tolist() for p in params]
    if args.entry == "updates":
        updates.finalize()
    with open(os.path.join(args.out, f"rank{ctx.rank}.json"), "w") as f:
        json.dump({"params": [p.get_value().tolist() for p in params],
                   "before_finalize": before_finalize, "losses": losses,
                   "initial": initial, "served": bool(served),
                   "dtype": str(params[0].dtype)}, f)


fit_each_config(p, fit, lambda: get_context().rank)
