"""The hierarchical exchangers on real ranks grouped into pretend hosts (or
real ones), against numpy references built from every rank's inputs.

Launched with ``TMPI_PRETEND_HOSTS`` set (e.g. ``2,2`` on 4 ranks) or across
emulated hosts. Each rank writes ``--out DIR/rank{r}.json``:

* ``cases``: per exchanger variant, dtype, size and buffer kind, whether the
  result of two successive exchanges equals the exact sum (integer-valued
  inputs) and lies within the fp32 (or, for ``hier16``, fp16) bound of the
  sum of gradient-like inputs, and a checksum of the result;
* ``layout``, ``auto``: the hosts found and what ``strategy='auto'`` picks;
* ``bsp``: BSP with the default strategy, its exchanger's name and its
  largest difference from the mean computed here;
* ``errors``: the message of each bad argument's ``ValueError``.
"""

import argparse
import hashlib
import json
import os

import numpy as np

from mpirun import note_errors_per_rank
from tmpi_core import (BSP, FlatBuffer, HierarchicalExchanger,
                       HierarchicalHalfExchanger, get_context)
from tmpi_core.exchangers import resolve_strategy
from tmpi_core.exchangers.hier import host_layout
from tmpi_core.exchangers.shm import PRETEND_HOSTS_ENV

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--sizes", default="1,7,700,4099")
args = p.parse_args()
ctx = get_context()
note_errors_per_rank(args.out, ctx.rank)
comm, size = ctx.comm, ctx.size
SIZES = [int(s) for s in args.sizes.split(",")]


def integers(rank, n, dtype, repeat):
    """Integer values, exact in every sum: the result must be bit-exact."""
    rs = np.random.RandomState(7 * n + 31 * rank + repeat)
    return rs.randint(-1000, 1000, size=n).astype(dtype)


def gradients(rank, n, dtype, repeat):
    """Gradient-like values over several orders of magnitude, and zeros."""
    rs = np.random.RandomState(1000 * n + 10 * rank + repeat)
    x = rs.standard_normal(n) * 10.0 ** rs.randint(-6, 2, size=n)
    x[::5] = 0.0
    return (x / size).astype(dtype)


def variants():
    yield "hier", lambda: HierarchicalExchanger(comm)
    yield "hier-1lane", lambda: HierarchicalExchanger(comm, lanes=1)
    # 1 KiB chunks: 700 float32 values make 3 chunks, not a multiple of 2
    yield "hier-chunked", lambda: HierarchicalExchanger(comm, chunk_bytes=1024)
    yield "hier16", lambda: HierarchicalHalfExchanger(comm)
    yield "hier16-chunked", lambda: HierarchicalHalfExchanger(
        comm, chunk_bytes=1024)


def check(name, ex, n, dtype, allocated):
    half = name.startswith("hier16")
    make = dict(allocate=ex.allocate) if allocated else {}
    buf = FlatBuffer([(n,)], dtype=dtype, **make)
    exact = within = True
    for repeat in range(2):
        # integers within fp16's exact range for hier16: still bit-exact
        ints = integers(ctx.rank, n, dtype, repeat) // (4 if half else 1)
        buf.pack([ints])
        ex.allreduce_sum(buf)
        want = sum(integers(r, n, dtype, repeat) // (4 if half else 1)
                   for r in range(size))
        exact &= bool(np.array_equal(buf.data, want))
        buf.pack([gradients(ctx.rank, n, dtype, repeat)])
        ex.allreduce_sum(buf)
        terms = np.stack([gradients(r, n, dtype, repeat).astype(np.float64)
                          for r in range(size)])
        ref = terms.sum(0)
        err = np.abs(buf.data.astype(np.float64) - ref)
        mag = np.abs(terms).sum(0)
        u = 2.0 ** -53 if dtype == np.float64 else 2.0 ** -24
        bound = size * u * mag
        if half:
            bound = (bound + 2.0 ** -11 * (mag + np.abs(ref))
                     + (size + 1) * 2.0 ** -25)
        within &= bool((err <= bound + 1e-300).all())
    return {"exact": exact, "within_bound": within,
            "checksum": hashlib.sha1(buf.data.tobytes()).hexdigest()}


cases = {}
for name, make in variants():
    ex = make()
    for dtype in (np.float32, np.float64):
        for n in SIZES:
            for allocated in (True, False):
                key = (f"{name}:{np.dtype(dtype).name}:{n}:"
                       f"{'window' if allocated else 'foreign'}")
                cases[key] = check(name, ex, n, dtype, allocated)
    lanes = ex.lanes
    ex.free()
    ex.free()                               # safe twice
    cases[f"{name}:lanes"] = lanes

layout = host_layout(comm)
layout.comm.Free()
auto = {"here": resolve_strategy("auto", comm)}
pretend = os.environ.get(PRETEND_HOSTS_ENV)
os.environ[PRETEND_HOSTS_ENV] = ",".join(["1"] * size)
auto["one_rank_per_host"] = resolve_strategy("auto", comm)
os.environ[PRETEND_HOSTS_ENV] = str(size)
auto["one_host"] = resolve_strategy("auto", comm)

errors = {}
os.environ[PRETEND_HOSTS_ENV] = f"{size},1"
try:
    resolve_strategy("auto", comm)
except ValueError as exc:
    errors["pretend"] = str(exc)
if pretend is None:
    del os.environ[PRETEND_HOSTS_ENV]
else:
    os.environ[PRETEND_HOSTS_ENV] = pretend
for key, kwargs in (("between", dict(between="fp8")),
                    ("lanes0", dict(lanes=0)),
                    ("lanes_bool", dict(lanes=True)),
                    ("lanes_too_many", dict(lanes=min(layout.sizes) + 1)),
                    ("chunk_bytes", dict(chunk_bytes=100))):
    try:
        HierarchicalExchanger(comm, **kwargs).free()
    except ValueError as exc:
        errors[key] = str(exc)

# BSP with its default strategy, 'auto', on these hosts
rule = BSP(mode="grads", comm=comm)
shapes = [(3, 5), (1001,), (1,)]
rng = np.random.default_rng(ctx.rank)
grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
rule.start([np.zeros(s, np.float32) for s in shapes])
diff = 0.0
for step in range(3):
    out = rule.on_gradients([g * (step + 1) for g in grads])
    everyone = comm.allgather([g * (step + 1) for g in grads])
    for i, got in enumerate(out):
        mean = sum(e[i].astype(np.float64) for e in everyone) / size
        diff = max(diff, float(np.abs(got - mean).max()))
    rule.end_step()
bsp = {"exchanger": rule._exchanger.name, "max_diff": diff}
rule._exchanger.free()

with open(os.path.join(args.out, f"rank{ctx.rank}.json"), "w") as f:
    json.dump({"cases": cases, "layout": layout.sizes, "host": layout.host,
               "auto": auto, "errors": errors, "bsp": bsp}, f)
