"""Persistent ``MPI_Allreduce_init`` against plain ``MPI_Allreduce``, alone.

    mpiexec -n 2 python benchmarks/persistent_allreduce.py
    mpiexec -n 2 python benchmarks/persistent_allreduce.py --sizes 1M,64M
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:\\
    glibc.malloc.trim_threshold=4294967295 \\
        mpiexec -n 2 python benchmarks/persistent_allreduce.py

For each size, two preallocated float32 arrays: one reduced in place by
``comm.Allreduce``, the other by a persistent request made once
(``comm.Allreduce_init(MPI.IN_PLACE, buf, op=MPI.SUM)``, then ``Start`` and
``Wait``). Each repetition times both, each after a ``Barrier``, in a random
order (the same on every rank); times are the slowest rank's. Also counted:
the minor page faults per call on rank 0 (``getrusage``), which show where
the time goes -- MPICH's blocking call allocates a scratch buffer each call,
and once that is beyond glibc's mmap threshold (32 MiB at most, by default)
every call maps fresh pages and faults them in; the persistent request
allocates its scratch once. Raising the mmap threshold and the trim
threshold (``GLIBC_TUNABLES``, third command; the mmap threshold alone makes
glibc trim the heap after each call, which faults as much) makes the
blocking call reuse heap memory instead.
"""

import argparse
import resource
import statistics
import time

import numpy as np
from mpi4py import MPI

DEFAULT_SIZES = "64K,256K,1M,4M,8M,16M,24M,32M,64M,128M"
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


def _size(text):
    t = text.strip().upper()
    return int(t[:-1]) * _UNITS[t[-1]] if t[-1] in _UNITS else int(t)


def _faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=DEFAULT_SIZES)
    p.add_argument("--budget-s", type=float, default=4.0,
                   help="about this many seconds per size (default 4)")
    args = p.parse_args(argv)
    comm = MPI.COMM_WORLD
    if comm.rank == 0:
        print(f"{comm.size} ranks, {MPI.Get_library_version().splitlines()[0]}"
              "; medians of the slowest rank, page faults on rank 0")
        print(f"{'size':>6} {'reps':>5} {'plain ms':>9} {'persist ms':>10} "
              f"{'ratio':>6} {'faults/call plain':>17} {'persistent':>10}")
    for text in args.sizes.split(","):
        n = _size(text) // 4
        plain = np.zeros(n, np.float32)
        pers = np.zeros(n, np.float32)
        request = comm.Allreduce_init(MPI.IN_PLACE, pers, op=MPI.SUM)
        times = {"plain": [], "pers": []}
        faults = {"plain": 0, "pers": 0}

        def run(which):
            comm.Barrier()
            f0 = _faults()
            t0 = time.perf_counter()
            if which == "plain":
                comm.Allreduce(MPI.IN_PLACE, plain, op=MPI.SUM)
            else:
                request.Start()
                request.Wait()
            dt = time.perf_counter() - t0
            faults[which] += _faults() - f0
            return dt

        run("plain")
        run("pers")                              # warm-up
        faults = {"plain": 0, "pers": 0}
        t_one = comm.allreduce(run("plain") + run("pers"), op=MPI.MAX)
        reps = int(max(20, min(1000, args.budget_s / max(t_one, 1e-9))))
        faults = {"plain": 0, "pers": 0}
        rng = np.random.default_rng(0)
        for _ in range(reps):
            order = ("plain", "pers") if rng.random() < 0.5 else \
                ("pers", "plain")
            for which in order:
                times[which].append(comm.allreduce(run(which), op=MPI.MAX))
        request.Free()
        if comm.rank == 0:
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"{text:>6} {reps:>5} {1e3 * med['plain']:>9.3f} "
                  f"{1e3 * med['pers']:>10.3f} "
                  f"{med['pers'] / med['plain']:>6.3f} "
                  f"{faults['plain'] / reps:>17.0f} "
                  f"{faults['pers'] / reps:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
