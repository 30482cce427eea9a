"""What each rank runs for :func:`tmpi_core.launch`. Not public.

``python -m tmpi_core._launched WORKDIR call`` imports the function that
``WORKDIR/call.pickle`` names and calls it; rank 0 writes its result to
``WORKDIR/result.pickle``. ``... WORKDIR script PATH ARGS...`` runs a
script. Every rank but 0 writes its output to ``WORKDIR/rank{r}.log``
(the caller shows it when the job fails); rank 0's goes to the caller.
"""

import importlib
import os
import pickle
import runpy
import sys

#: Where launchers say which rank a process is, before MPI starts.
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK",
              "SLURM_PROCID")


def launcher_rank(environ=os.environ):
    """This process's rank as the launcher's environment says, or 0."""
    for var in _RANK_VARS:
        value = environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def _main(workdir, kind, *rest):
    rank = launcher_rank()
    if rank != 0:
        fd = os.open(os.path.join(workdir, f"rank{rank}.log"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    if kind == "script":
        sys.argv = list(rest)
        runpy.run_path(rest[0], run_name="__main__")
        return
    with open(os.path.join(workdir, "call.pickle"), "rb") as f:
        spec = pickle.load(f)
    target = importlib.import_module(spec["module"])
    for part in spec["name"].split("."):
        target = getattr(target, part)
    result = target(*spec["args"], **spec["kwargs"])
    if rank == 0:
        path = os.path.join(workdir, "result.pickle")
        with open(path + ".tmp", "wb") as f:
            pickle.dump(result, f)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    _main(*sys.argv[1:])
