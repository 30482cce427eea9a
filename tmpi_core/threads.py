"""Threads per rank, decided before any library sizes its thread pool.

Ranks on one host share its cores; each rank should use cores / ranks-on-host
compute threads (:meth:`tmpi_core.Context.threads_per_rank`). Some pools are
sized once, when their library loads: the OpenBLAS Theano links starts a
thread per core at ``import theano``, long before tmpi makes a
:class:`~tmpi_core.Context`. So :func:`limit_at_startup` runs at interpreter
start (from the ``.pth`` hook tmpi installs) and takes the number of ranks on
this host from the launcher's environment, without MPI.

This module imports nothing beyond the standard library.
"""

import os

__all__ = ["POOL_VARS", "USER_THREAD_VARS", "limit_at_startup",
           "local_ranks_from_launcher", "user_set_threads"]

#: What a user sets to choose the thread count (either wins).
USER_THREAD_VARS = ("TMPI_NUM_THREADS", "OMP_NUM_THREADS")
#: What tmpi sets, for the libraries that read one of them (TensorFlow
#: reads its own).
POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "TF_NUM_INTRAOP_THREADS")
#: XLA's CPU backend (JAX) has no thread-count variable; at one thread per
#: rank its multi-threaded Eigen kernels are switched off.
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"
#: Set next to them: the values are tmpi's, not the user's.
MARK = "_TMPI_THREADS_SET"

# Ranks on this host, by launcher: MPICH/hydra and Intel MPI, Open MPI,
# MVAPICH, Slurm's srun (one count per node, the same on every node).
_LAUNCHER_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE",
                  "MV2_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")


def user_set_threads(environ=None):
    """True when the user chose the thread count (``TMPI_NUM_THREADS`` or
    ``OMP_NUM_THREADS``), not tmpi's start-up limit."""
    env = os.environ if environ is None else environ
    if env.get("TMPI_NUM_THREADS"):
        return True
    return bool(env.get("OMP_NUM_THREADS")) and env.get(MARK) != "1"


def local_ranks_from_launcher(environ=None):
    """Ranks on this host as the launcher tells them, or None outside one."""
    env = os.environ if environ is None else environ
    for var in _LAUNCHER_VARS:
        value = env.get(var, "")
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return None


def limit_at_startup(environ=None, cores=None):
    """Set the pool variables to cores / ranks-on-host, unless the user set
    a thread count or this process was not started by an MPI launcher.

    Args:
        environ: the environment to read and change (default ``os.environ``).
        cores: the cores this process may use (default: its affinity).

    Returns:
        the thread count set, or None when nothing was set.
    """
    env = os.environ if environ is None else environ
    if env.get("TMPI_THREAD_LIMIT", "1") == "0" or user_set_threads(env):
        return None
    local = local_ranks_from_launcher(env)
    if local is None:
        return None
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:          # not Linux
            cores = os.cpu_count() or 1
    threads = max(1, cores // local)
    for var in POOL_VARS:
        if not env.get(var):
            env[var] = str(threads)
    flags = env.get("XLA_FLAGS", "")
    if threads == 1 and XLA_ONE_THREAD.split("=")[0] not in flags:
        env["XLA_FLAGS"] = f"{flags} {XLA_ONE_THREAD}".strip()
    env[MARK] = "1"
    return threads
