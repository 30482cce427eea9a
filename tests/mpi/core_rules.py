"""Drive the framework-free core on any number of ranks (1 included).

Each rank writes ``--out DIR/rank{r}.json`` with what it observed; the test
compares against closed forms computed from the rank count.
"""

import argparse
import json
import os

import numpy as np

import tmpi_core

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
args = p.parse_args()

ctx = tmpi_core.get_context()
rank, size = ctx.rank, ctx.size
result = {"size": size, "local_size": ctx.local_size,
          "local_rank": ctx.local_rank, "threads": ctx.threads}

# Broadcast: rank 0's values, exactly, in every dtype.
params = [np.full((3, 2), rank + 1.5, np.float32),
          np.arange(4, dtype=np.float64) * (rank + 1) + 1e-12,
          np.array([2**40 + rank], np.int64)]
rule = tmpi_core.make_rule("bsp", mode="grads")
got = rule.start(params)
result["bcast"] = [g.tolist() for g in got]

# Gradient averaging over several steps: grads = (rank+1) * step.
means = []
for step in range(1, 4):
    grads = [np.full((3, 2), (rank + 1) * step, np.float32),
             np.full(5, -(rank + 1.0) * step, np.float32),
             np.ones(2, np.float32) if step == 1 else None]
    out = rule.on_gradients(grads)
    means.append([o.tolist() for o in out])
    rule.end_step()
result["grad_means"] = means
result["step"] = rule.state_dict()["step"]

# Parameter averaging every 2 steps: x_r = rank at every step.
prule = tmpi_core.make_rule("bsp", mode="params", every=2)
x = [np.full(3, float(rank), np.float32)]
prule.start(x)
exchanged = []
for step in range(5):
    wants = prule.wants_params()
    new = prule.end_step([np.full(3, float(rank), np.float32)] if wants else None)
    exchanged.append(None if new is None else new[0].tolist())
result["param_exchanges"] = exchanged
result["final"] = prule.finalize([np.full(3, float(rank), np.float32)])[0].tolist()

# Sharding: every rank the same count, together a partition of a prefix.
result["shard"] = tmpi_core.shard_indices(10, rank, size).tolist()

with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
