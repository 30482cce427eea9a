"""Train a tmpi_layers model on every rank; each writes ``DIR/rank{r}.json``.

``mpiexec -n P python layers_fit.py --lib pytensor|theano --model
alexnet|resnet50 --rule bsp|easgd|gosgd --options JSON --out DIR``.
Rank-dependent data from :func:`layer_data`; ranks start from different
weights (the adapter broadcasts rank 0's).
"""

import argparse
import json
import os

import numpy as np

from tmpi_core import get_context

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--lib", default="pytensor")
p.add_argument("--model", default="alexnet")
p.add_argument("--rule", default="bsp")
p.add_argument("--options", default="{}", help="JSON options of --rule")
p.add_argument("--steps", type=int, default=4)
p.add_argument("--batch", type=int, default=4, help="per rank")
args = p.parse_args()

from layers_models import build, layer_data  # noqa: E402

ctx = get_context()
model = build(args.lib, args.model, seed=100 + ctx.rank)
step = model.train_step(args.rule, lr=0.01, **json.loads(args.options))
x, y = layer_data(args.steps * args.batch * ctx.size)
initial = [v.tolist() for v in model.get_values()]
losses = []
served = step.serve()
for k in range(0 if served else args.steps):
    # the k-th large batch, strided over ranks as tmpi_core.shard does
    idx = np.arange(k * args.batch * ctx.size, (k + 1) * args.batch * ctx.size)
    idx = idx[ctx.rank::ctx.size]
    losses.append(step(x[idx], y[idx])[0])
rule = step.updates.rule if step.updates is not None else None
step.finalize()
with open(os.path.join(args.out, f"rank{ctx.rank}.json"), "w") as f:
    json.dump({"values": [v.tolist() for v in model.get_values()],
               "initial": initial, "losses": losses, "served": bool(served),
               "total_weight": getattr(rule, "total_weight", None),
               "exchange": step.exchange}, f)
