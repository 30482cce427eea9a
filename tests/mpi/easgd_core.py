"""Drive EASGD on real ranks with a deterministic local step.

Every rank (every worker, asynchronously) minimises
``0.5 |x - target_r|^2`` by plain gradient steps ``x <- x - eta (x -
target_r)`` with a rank-dependent target; every ``tau`` steps the rule's
elastic exchange runs. Each rank writes ``--out DIR/rank{r}.json``: its
trajectory after every step, the final center, and its elastic bookkeeping.
``--delays`` makes workers sleep random times so arrivals interleave.
"""

import argparse
import json
import os
import time

import numpy as np

from tmpi_core import get_context, make_rule

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--steps", type=int, default=12)
p.add_argument("--tau", type=int, default=3)
p.add_argument("--eta", type=float, default=0.3)
p.add_argument("--synchronous", action="store_true")
p.add_argument("--delays", action="store_true")
args = p.parse_args()

ctx = get_context()
rank = ctx.rank
rule = make_rule("easgd", tau=args.tau, synchronous=args.synchronous)
x = np.random.RandomState(rank).standard_normal(5)       # differs per rank
target = np.arange(5.0) * (rank + 1)
x = np.array(rule.start([x])[0])                          # rank 0's values
x0 = x.tolist()
trajectory = []
rs = np.random.RandomState(100 + rank)
if rule.role == "server":
    center = rule.serve()
else:
    for step in range(args.steps):
        if args.delays:
            time.sleep(rs.uniform(0, 0.01))
        x = x - args.eta * (x - target)
        new = rule.end_step([x] if rule.wants_params() else None)
        if new is not None:
            x = np.array(new[0])
        trajectory.append(x.tolist())
final = rule.finalize([x])[0]
with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
    json.dump({"role": rule.role, "alpha": rule.alpha, "x0": x0,
               "trajectory": trajectory, "center": np.asarray(final).tolist(),
               "elastic_total": rule.elastic_total.tolist(),
               "exchanges": rule.exchanges}, f)
