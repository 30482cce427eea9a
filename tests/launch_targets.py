"""Functions tests/test_launch.py starts on MPI ranks with tmpi_core.launch
(the ranks import them by name)."""

import os
import time

import numpy as np


def sum_of_ranks(scale):
    """Every rank adds ``rank * scale``; every rank prints a line."""
    from tmpi_core import get_context

    ctx = get_context()
    total = np.array([ctx.rank * scale], np.float64)
    ctx.allreduce_sum(total)
    print(f"hello from rank {ctx.rank}", flush=True)
    return {"size": ctx.size, "sum": float(total[0]), "rank": ctx.rank}


def fail_on(rank):
    """Raise on rank ``rank``, after a line of output."""
    from tmpi_core import get_context

    ctx = get_context()
    print(f"rank {ctx.rank} starting", flush=True)
    if ctx.rank == rank:
        raise RuntimeError(f"injected failure on rank {rank}")
    ctx.barrier()


def wait_forever(directory):
    """Write this rank's pid into ``directory``, then wait."""
    from tmpi_core import get_context

    ctx = get_context()
    with open(os.path.join(directory, f"{ctx.rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.1)
