"""Every exchanger on real ranks: rank-dependent inputs, exact references.

Each rank writes ``--out DIR/rank{r}.json`` with, per strategy and size, the
result of ``allreduce_sum`` and the bound-checked error against a float64
reference built from every rank's inputs (regenerated from the seeds).
"""

import argparse
import json
import os

import numpy as np

from tmpi_core import EXCHANGERS, FlatBuffer, get_context, make_exchanger
from tmpi_core.exchangers import HalfPrecisionExchanger

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
args = p.parse_args()

ctx = get_context()
p_ = ctx.size


def inputs(rank, n):
    rs = np.random.RandomState(1000 * n + rank)
    # gradient-like values over several orders of magnitude, and exact zeros
    x = rs.standard_normal(n) * 10.0 ** rs.randint(-6, 2, size=n)
    x[::5] = 0.0
    return (x / p_).astype(np.float32)


def exchangers():
    for strategy in sorted(EXCHANGERS):
        yield strategy, make_exchanger(strategy, ctx.comm)
    # shm reducing in place in its shared window (the path BSP takes)
    yield "shm-allocated", make_exchanger("shm", ctx.comm)
    # cast backends mixed across ranks: the bits must not depend on them
    yield "asa16-mixed", HalfPrecisionExchanger(
        ctx.comm, cast="numpy" if ctx.rank % 2 == 0 else "auto")


result = {}
for strategy, ex in exchangers():
    for n in (1, 7, 64, 1001):
        buf = FlatBuffer([(n,)])
        if strategy == "shm-allocated":       # the buffer is the window
            buf = FlatBuffer([(n,)], allocate=ex.allocate)
        for repeat in range(2):            # reuse of preallocated buffers
            buf.pack([inputs(ctx.rank, n)])
            ex.allreduce_sum(buf)
        contributions = np.stack([inputs(r, n).astype(np.float64)
                                  for r in range(p_)])
        exact = contributions.sum(0)
        err = np.abs(buf.data.astype(np.float64) - exact)
        bound = (2.0 ** -11 * (np.abs(contributions).sum(0) + np.abs(exact))
                 + (p_ + 1) * 2.0 ** -25
                 + p_ * 2.0 ** -24 * np.abs(contributions).sum(0))
        result[f"{strategy}:{n}"] = {
            "max_rel_err": float((err / np.maximum(np.abs(exact), 1e-30)).max()),
            "max_abs_err": float(err.max()),
            "within_fp16_bound": bool((err <= bound).all()),
            # fp32 summation of p terms: |err| <= p u32 sum_i |x_i|
            "within_fp32": bool((err <= p_ * 2.0 ** -24 * np.abs(
                contributions).sum(0) + 1e-30).all()),
            "checksum": float(buf.data.astype(np.float64).sum()),
        }
with open(os.path.join(args.out, f"rank{ctx.rank}.json"), "w") as f:
    json.dump(result, f)
