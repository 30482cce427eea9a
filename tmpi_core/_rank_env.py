"""What each rank runs under ``tmpi-run``: set its threads and its GPU from
the launcher's local rank, then become the user's program. Not public."""

import glob
import os
import sys

from tmpi_core import threads


def local_rank(environ):
    """This rank's index among the ranks of its host, from the launcher."""
    for var in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK",
                "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
        value = environ.get(var, "")
        if value.isdigit():
            return int(value)
    return None


def gpu_ids(environ):
    """The GPUs this host offers (the user's ``CUDA_VISIBLE_DEVICES`` list
    if set, else the NVIDIA device files)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [g for g in visible.split(",") if g.strip()]
    return sorted(p[len("/dev/nvidia"):] for p in glob.glob("/dev/nvidia[0-9]*"))


def prepare(environ):
    """Set ``CUDA_VISIBLE_DEVICES`` to the local rank's GPU (where there
    are GPUs) and the thread limit; returns what was set."""
    done = {}
    rank = local_rank(environ)
    gpus = gpu_ids(environ)
    if rank is not None and gpus:
        environ["CUDA_VISIBLE_DEVICES"] = gpus[rank % len(gpus)]
        done["CUDA_VISIBLE_DEVICES"] = environ["CUDA_VISIBLE_DEVICES"]
    count = threads.limit_at_startup(environ)
    if count is not None:
        done["threads"] = count
    return done


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tmpi_core._rank_env PROGRAM [ARGS...]")
    prepare(os.environ)
    os.execvp(sys.argv[1], sys.argv[1:])
