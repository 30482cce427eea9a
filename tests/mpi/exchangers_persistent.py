"""``ar`` with persistent requests against plain ``MPI_Allreduce``.

Each rank writes ``--out DIR/rank{r}.json`` with, per case, whether the
persistent exchanger's result equals the plain one and the exact (float64)
sum to fp32 rounding, and how many requests the exchanger holds.
"""

import argparse
import gc
import json
import os

import numpy as np

from tmpi_core import FlatBuffer, get_context
from tmpi_core.exchangers.ar import AllreduceExchanger

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
args = p.parse_args()

ctx = get_context()
size = ctx.size


def inputs(rank, n, step):
    rs = np.random.RandomState(100_000 * step + 1000 * n + rank)
    x = rs.standard_normal(n) * 10.0 ** rs.randint(-6, 2, size=n)
    x[::5] = 0.0
    return x.astype(np.float32)


def exchange(ex, buf, step):
    n = buf.size
    buf.data[:] = inputs(ctx.rank, n, step)
    ex.allreduce_sum(buf)
    contributions = np.stack([inputs(r, n, step).astype(np.float64)
                              for r in range(size)])
    exact = contributions.sum(0)
    err = np.abs(buf.data.astype(np.float64) - exact)
    within = bool((err <= size * 2.0 ** -24 * np.abs(contributions).sum(0)
                   + 1e-30).all())
    return buf.data.copy(), within


persistent = AllreduceExchanger(ctx.comm, persistent=True)
plain = AllreduceExchanger(ctx.comm, persistent=False)
result = {"persistent": persistent.persistent, "plain": plain.persistent}
# Two live buffers exchanged alternately (BSP: gradients and parameters),
# each several times: one request per buffer, reused, reading the values
# packed before each Start.
bufs = {n: (FlatBuffer([(n,)]), FlatBuffer([(n,)])) for n in (3, 7, 1001,
                                                              300_000)}
for step in range(3):
    for n, (b_pers, b_plain) in bufs.items():
        got, ok = exchange(persistent, b_pers, step)
        ref, ok_ref = exchange(plain, b_plain, step)
        result[f"{n}:{step}"] = {
            "within_fp32": ok, "ref_within_fp32": ok_ref,
            "equal_to_plain": bool(np.array_equal(got, ref)),
            "checksum": float(got.astype(np.float64).sum())}
result["requests_live"] = len(persistent._requests)
result["plain_requests"] = len(plain._requests)

# The buffer's array replaced (a new allocation): a new request on the new
# memory, not a Start on the old.
b = bufs[7][0]
b.data = np.zeros_like(b.data)
_, ok = exchange(persistent, b, 5)
result["replaced_data_within_fp32"] = ok
result["requests_after_replace"] = len(persistent._requests)

# A buffer that dies frees its request; free() frees the rest and the
# exchanger keeps working afterwards.
del bufs[1001], b
gc.collect()
result["requests_after_gc"] = len(persistent._requests)
persistent.free()
persistent.free()
result["requests_after_free"] = len(persistent._requests)
_, ok = exchange(persistent, bufs[300_000][0], 6)
result["after_free_within_fp32"] = ok
result["requests_after_reuse"] = len(persistent._requests)

# Automatic: a persistent request only from persistent_min_bytes up (4000
# bytes here: the 1001- and 300000-element buffers, not the 3 and 7).
auto = AllreduceExchanger(ctx.comm, persistent_min_bytes=4000)
auto_bufs = [FlatBuffer([(n,)]) for n in (3, 7, 1001, 300_000)]
auto_ok = [exchange(auto, b, 10 + step)[1] for step in range(2)
           for b in auto_bufs]
result["auto_within_fp32"] = all(auto_ok)
result["auto_request_sizes"] = sorted(
    b.size for b in auto_bufs if id(b) in auto._requests)

with open(os.path.join(args.out, f"rank{ctx.rank}.json"), "w") as f:
    json.dump(result, f)
