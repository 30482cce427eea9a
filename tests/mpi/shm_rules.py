"""BSP (gradients, parameters) and synchronous EASGD with ``strategy='shm'``
against the same rules with ``'ar'``, on the same rank-dependent inputs.

Each rank writes ``--out DIR/rank{r}.json`` with the largest difference
between the two strategies' outputs over 5 steps, and a checksum.
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
shapes = [(7, 3), (1001,), (1,)]


def values(step, salt):
    rng = np.random.default_rng((ctx.rank, step, salt))
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def run(strategy):
    outs, same = [], []            # all outputs; those equal on all ranks
    bsp_g = tmpi_core.BSP(mode="grads", strategy=strategy)
    bsp_p = tmpi_core.BSP(mode="params", strategy=strategy)
    easgd = tmpi_core.EASGD(tau=1, alpha=0.1, synchronous=True,
                            strategy=strategy)
    bsp_g.start(values(0, 0))
    bsp_p.start(values(0, 1))
    x = [a.copy() for a in easgd.start(values(0, 2))]
    for step in range(1, 6):
        same += [a.copy() for a in bsp_g.on_gradients(values(step, 0))]
        bsp_g.end_step()
        same += [a.copy() for a in bsp_p.end_step(values(step, 1))]
        x = [a + v for a, v in zip(x, values(step, 2))]
        x = [a.copy() for a in easgd.end_step(x)]
        outs += x
    same += [a.copy() for a in bsp_p.finalize(values(9, 1))]
    return same, outs


(ar_same, ar_rest), (shm_same, shm_rest) = run("ar"), run("shm")
diff = max(float(np.abs(a - b).max())
           for a, b in zip(ar_same + ar_rest, shm_same + shm_rest))
with open(os.path.join(args.out, f"rank{ctx.rank}.json"), "w") as f:
    json.dump({"max_diff": diff, "n": len(shm_same) + len(shm_rest),
               "checksum": [np.asarray(a).tobytes().hex()
                            for a in shm_same]}, f)
