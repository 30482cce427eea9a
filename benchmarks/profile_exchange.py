"""Where an exchange spends its time, step by step (a line profile by hand).

    mpiexec -n 2 python benchmarks/profile_exchange.py --what asa16 --mib 16
    mpiexec -n 2 python benchmarks/profile_exchange.py --what exch --mib 16
    mpiexec -n 2 python benchmarks/profile_exchange.py --help

cProfile sees neither numpy's casts nor mpi4py's collectives (both are C
code called from one Python line), so this replays the lines of an exchange
with a timer around each, on the exchanger's own buffers:

* ``asa16``: the lines of ``HalfPrecisionExchanger.allreduce_sum`` -- cast
  the buffer to fp16, ``Alltoall``, the fp32 sum of the received chunks,
  cast the sum to fp16, ``Allgather``, cast back to fp32;
* ``exch``: ``BSP(mode='grads').on_gradients`` on 8 tensors -- the pack
  pass (copy x 1/p into the fused buffer), then the ``ar`` exchanger.

The buffer is refilled with gradient-like values (normal, ``--scale``)
before each call, outside the timers. Each line is preceded by nothing but
the previous line, as in the real call; the slowest rank's time per line is
kept, and rank 0 prints the medians and each line's share of their sum.
"""

import argparse
import statistics
import time

import numpy as np
from mpi4py import MPI

from tmpi_core.buffer import FlatBuffer
from tmpi_core.context import get_context
from tmpi_core.exchangers import HalfPrecisionExchanger, make_exchanger


def _asa16_lines(ex, buf):
    """The lines of asa16's allreduce_sum, as (label, callable) pairs."""
    data = buf.data
    n = data.size
    ex._allocate(n)
    comm = ex.comm
    casts = ex._casts                   # the exchanger's own cast backend

    return [
        ("cast fp32 -> fp16 (n)", lambda: casts.to_half(data, ex._send[:n])),
        ("Alltoallv (n fp16, no self)", lambda: comm.Alltoallv(*ex._a2a)),
        ("sum chunks in fp32 -> fp16 (n/p)",
         lambda: casts.sum_chunks(ex._chunks, ex._acc, ex._mine)),
        ("Allgather (in place)",
         lambda: comm.Allgather(MPI.IN_PLACE, ex._all)),
        ("cast fp16 -> fp32 (n)", lambda: casts.to_single(ex._all[:n], data)),
    ]


def _exch_lines(ctx, buf, grads):
    ex = make_exchanger("ar", ctx.comm)
    scale = np.float32(1.0 / ctx.size)
    return [
        ("pack x 1/p (8 tensors)", lambda: buf.pack(grads, scale=scale)),
        ("ar (Allreduce)", lambda: ex.allreduce_sum(buf)),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", choices=["asa16", "exch"], default="asa16")
    p.add_argument("--cast", choices=["auto", "torch", "numpy"],
                   default="auto",
                   help="asa16's fp16 cast backend (default auto: torch "
                        "when it imports)")
    p.add_argument("--mib", type=float, default=16.0)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--scale", type=float, default=1e-3,
                   help="standard deviation of the values (default 1e-3)")
    args = p.parse_args(argv)
    ctx = get_context()
    n = int(args.mib * 2**20) // 4
    rng = np.random.default_rng(ctx.rank)
    values = (args.scale * rng.standard_normal(n)).astype(np.float32)
    parts = [n // 8] * 7 + [n - 7 * (n // 8)]
    grads = [g.copy() for g in np.split(values, np.cumsum(parts)[:-1])]
    if args.what == "asa16":
        buf = FlatBuffer([(n,)])
        ex = HalfPrecisionExchanger(ctx.comm, cast=args.cast)
        lines = _asa16_lines(ex, buf)
    else:
        buf = FlatBuffer([(s,) for s in parts])
        lines = _exch_lines(ctx, buf, grads)
    times = []
    for i in range(args.calls + 1):
        np.copyto(buf.data, values)
        ctx.barrier()
        row = []
        for _, fn in lines:
            t0 = time.perf_counter()
            fn()
            row.append(time.perf_counter() - t0)
        if i:                                   # the first call warms up
            times.append(row)
    worst = np.max(np.array(ctx.allgather(times)), axis=0)   # calls x lines
    if ctx.rank == 0:
        med = [statistics.median(worst[:, j]) for j in range(len(lines))]
        total = sum(med)
        cast = f", {ex.cast_backend} casts" if args.what == "asa16" else ""
        print(f"{args.what}: {args.mib:g} MiB, {ctx.size} ranks{cast}, "
              "values of "
              f"std {args.scale:g}, medians of {args.calls} calls (slowest "
              "rank per line)")
        for (label, _), m in zip(lines, med):
            print(f"  {label:<33} {1e3 * m:>9.3f} ms {100 * m / total:>5.1f} %")
        print(f"  {'sum':<33} {1e3 * total:>9.3f} ms")
    return worst


if __name__ == "__main__":
    main()
