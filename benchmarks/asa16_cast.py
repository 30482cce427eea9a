"""asa16 with each float16 cast backend, side by side.

    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/asa16_cast.py
    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/asa16_cast.py --mib 16 --std 1e-5 --repeats 12

Three ``asa16`` exchangers on the same data, in a rotating order:

* ``torch``: the casts on torch's vectorised CPU kernels (the default when
  torch imports; skipped without torch);
* ``branch-free``: ``cast='numpy'``, float32 -> float16 through the
  branch-free ufunc cast of ``tmpi_core.exchangers._half``;
* ``numpy``: every cast through numpy's own ``np.copyto`` (what asa16 did
  first).

Each call after a ``Barrier``; the slowest rank's time counts; medians and
ratios to ``numpy``. Checks that all give the same bits (exit status 1 if
not).
"""

import argparse
import statistics
import time

import numpy as np
from mpi4py import MPI

from tmpi_core import FlatBuffer
from tmpi_core.exchangers._half import HalfCasts
from tmpi_core.exchangers.asa16 import HalfPrecisionExchanger


class _NumpyOwnCasts(HalfCasts):
    """Every conversion through numpy's own (scalar) casts."""

    def __init__(self):
        super().__init__("numpy")
        self.backend = "numpy-own"

    def to_half(self, src, dst):
        np.copyto(dst, src, casting="same_kind")

    def sum_chunks(self, chunks, acc, out):
        np.copyto(acc, chunks[0], casting="same_kind")
        for c in chunks[1:]:
            np.add(acc, c, out=acc)
        np.copyto(out, acc, casting="same_kind")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=float, default=16.0)
    p.add_argument("--std", type=float, default=1e-3,
                   help="standard deviation of the values (gradient-like)")
    p.add_argument("--repeats", type=int, default=12)
    args = p.parse_args(argv)
    comm = MPI.COMM_WORLD
    n = int(args.mib * 2**20) // 4
    rng = np.random.default_rng(comm.rank)
    src = (rng.normal(size=n) * args.std).astype(np.float32)
    ways = {}
    try:
        ways["torch"] = HalfPrecisionExchanger(comm, cast="torch")
    except ImportError:
        pass
    ways["branch-free"] = HalfPrecisionExchanger(comm, cast="numpy")
    own = HalfPrecisionExchanger(comm, cast="numpy")
    own._casts = _NumpyOwnCasts()
    ways["numpy"] = own
    buffers = {name: FlatBuffer([(n,)]) for name in ways}
    times = {name: [] for name in ways}
    names = list(ways)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            np.copyto(buffers[name].data, src)
            comm.Barrier()
            t0 = time.perf_counter()
            ways[name].allreduce_sum(buffers[name])
            dt = time.perf_counter() - t0
            times[name].append(comm.allreduce(dt, op=MPI.MAX))
    ref = buffers["numpy"].data
    same = all(np.array_equal(b.data, ref) for b in buffers.values())
    same = comm.allreduce(same, op=MPI.LAND)
    if comm.rank == 0:
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"asa16, {args.mib:g} MiB, std {args.std:g}, {comm.size} "
              f"ranks, medians of {args.repeats}; same bits: {same}")
        for name in names:
            print(f"  {name:<12} {med[name]:9.2f} ms   /numpy "
                  f"{med[name] / med['numpy']:.3f}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
