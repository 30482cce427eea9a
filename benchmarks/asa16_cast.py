"""asa16 with numpy's float16 cast against its branch-free cast, side by side.

    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/asa16_cast.py
    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/asa16_cast.py --mib 16 --std 1e-3 --repeats 12

Two ``asa16`` exchangers on the same data, alternating in order: the
shipped one (float32 -> float16 through ``tmpi_core.exchangers._half``) and
one whose two float32 -> float16 casts go through numpy's
``np.copyto(..., casting='same_kind')``. Each call after a ``Barrier``; the
slowest rank's time counts; medians. Checks that both give the same bits.
"""

import argparse
import statistics
import time

import numpy as np
from mpi4py import MPI

from tmpi_core import FlatBuffer
from tmpi_core.exchangers.asa16 import HalfPrecisionExchanger


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
    shipped = HalfPrecisionExchanger(comm)
    numpy_cast = HalfPrecisionExchanger(comm)
    numpy_cast._cast = lambda s, d: np.copyto(d, s, casting="same_kind")
    ways = {"branch-free": shipped, "numpy": numpy_cast}
    buffers = {name: FlatBuffer([(n,)]) for name in ways}
    times = {name: [] for name in ways}
    for r in range(args.repeats):
        order = list(ways) if r % 2 else list(reversed(list(ways)))
        for name in order:
            np.copyto(buffers[name].data, src)
            comm.Barrier()
            t0 = time.perf_counter()
            ways[name].allreduce_sum(buffers[name])
            dt = time.perf_counter() - t0
            times[name].append(comm.allreduce(dt, op=MPI.MAX))
    same = np.array_equal(buffers["numpy"].data, buffers["branch-free"].data)
    same = comm.allreduce(same, op=MPI.LAND)
    if comm.rank == 0:
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"asa16, {args.mib:g} MiB, std {args.std:g}, {comm.size} ranks, "
              f"medians of {args.repeats}: numpy cast {med['numpy']:.1f} ms, "
              f"branch-free {med['branch-free']:.1f} ms, ratio "
              f"{med['branch-free'] / med['numpy']:.3f}; same bits: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
