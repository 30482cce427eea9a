"""Cost of the exchange timeout (``TMPI_EXCHANGE_TIMEOUT``) per exchange.

    .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/guard_overhead.py

BSP gradient exchanges of a small buffer (``--floats``, default 1,000: the
collective is as cheap as it gets, so the guard's share is at its largest),
alternating blocks of ``--steps`` exchanges without and with a timeout set,
``--blocks`` times; prints the median microseconds per exchange of each
and their ratio (slowest rank's block time).
"""

import argparse
import statistics
import time

import numpy as np
from mpi4py import MPI

import tmpi_core


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--floats", type=int, default=1000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--blocks", type=int, default=10)
    args = p.parse_args(argv)
    comm = MPI.COMM_WORLD
    rule = tmpi_core.BSP()
    grads = [np.ones(args.floats, np.float32)]
    rule.start(grads)
    times = {"off": [], "on": []}
    for block in range(2 * args.blocks):
        which = ("off", "on")[(block + block // 2) % 2]
        tmpi_core.set_exchange_timeout(3600 if which == "on" else None)
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            rule.on_gradients(grads)
            rule.end_step()
        dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        times[which].append(1e6 * dt / args.steps)
    if comm.rank == 0:
        off = statistics.median(times["off"])
        on = statistics.median(times["on"])
        print(f"BSP exchange of {args.floats} floats, {comm.size} ranks, "
              f"medians of {args.blocks} blocks of {args.steps}: "
              f"no timeout {off:.2f} us, timeout set {on:.2f} us, "
              f"on/off {on / off:.3f}")


if __name__ == "__main__":
    main()
