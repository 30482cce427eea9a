"""Count this rank's busy threads while a BLAS product runs, the library
imported first, as a user's script does (no tmpi import before it).

Run by tests/test_threads.py as ``mpiexec -n 2 python busy_threads.py
--out DIR --lib theano|numpy``; writes ``rank{r}.json`` with the busy
thread count, the pool variables seen and tmpi's thread count.
"""

import argparse
import json
import os
import time

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--lib", choices=("theano", "numpy"), default="numpy")
p.add_argument("--seconds", type=float, default=1.5)
args = p.parse_args()

if args.lib == "theano":
    import theano                 # first, as Lasagne's examples do
    import theano.tensor as T

    a, b = T.dmatrix(), T.dmatrix()
    product = theano.function([a, b], T.dot(a, b))
else:
    import numpy

    product = numpy.dot
import numpy as np  # noqa: E402


def cpu_ticks():
    """utime + stime of every thread of this process, by thread id."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])
    return ticks


x = np.random.default_rng(0).normal(size=(600, 600))
product(x, x)                                # warm up: pools start
before, start = cpu_ticks(), time.monotonic()
while time.monotonic() - start < args.seconds:
    product(x, x)
after, wall = cpu_ticks(), time.monotonic() - start
# Busy: a thread that did at least a third of the busiest one's work (the
# machine may be shared, so no absolute share of the wall time is safe).
work = [t - before.get(tid, 0) for tid, t in after.items()]
busy = sum(1 for w in work if w > 0 and w >= max(work) / 3)
rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK",
                                                      "0")))
from tmpi_core import get_context  # noqa: E402  (after the measurement)

with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
    json.dump({"busy": busy, "threads": get_context().threads,
               "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}, f)
