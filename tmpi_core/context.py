"""Communicator context: who am I, who shares my host, how many threads I get.

mpi4py is imported lazily, the first time a context is made, so importing
``tmpi_core`` never initialises MPI by itself.
"""

import os
import sys
import threading
import time

from tmpi_core.threads import POOL_VARS, user_set_threads

__all__ = ["Context", "get_context"]

_DEFAULT = {}

#: Seconds the abort hook waits after printing a traceback and before
#: ``MPI_Abort``, so the launcher can forward the output first.
ABORT_GRACE_S = 0.5
_LOCK = threading.Lock()


class Context:
    """Rank, size and host layout of one communicator.

    Args:
        comm: an ``mpi4py.MPI.Comm``; defaults to ``MPI.COMM_WORLD``.
        abort_on_exception: install a ``sys.excepthook`` that prints the
            traceback and aborts the whole job (``comm.Abort(1)``) when an
            uncaught exception ends this rank, so other ranks never hang in a
            collective. Only installed when the job has more than one rank.

    Attributes:
        comm: the communicator.
        rank, size: this process's rank and the number of ranks.
        local_rank, local_size: rank among, and number of, ranks on this host.
        threads: threads this rank should use for compute (see
            :meth:`threads_per_rank`).
        user_set_threads: True when the user fixed the thread count through
            ``TMPI_NUM_THREADS`` or ``OMP_NUM_THREADS`` before tmpi started.

    Example:
        >>> ctx = get_context()
        >>> if ctx.rank == 0:
        ...     print(f"{ctx.size} ranks, {ctx.threads} threads each")
    """

    def __init__(self, comm=None, *, abort_on_exception=True):
        from mpi4py import MPI

        if comm is not None and not isinstance(comm, MPI.Comm):
            raise ValueError(
                f"comm={comm!r} must be an mpi4py.MPI.Comm (MPI.COMM_WORLD "
                "or one split from it) or None")
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            self.local_rank = local.Get_rank()
            self.local_size = local.Get_size()
        finally:
            local.Free()
        self.user_set_threads = user_set_threads()
        self.threads = self.threads_per_rank()
        self.abort_on_exception = abort_on_exception
        self.ensure_abort_hook()

    def ensure_abort_hook(self):
        """(Re)install the abort-on-exception hook if this context wants it.

        Cheap; rules call it before their first collective because some
        libraries (Theano, PyTensor) replace ``sys.excepthook`` on import.
        """
        if self.abort_on_exception and self.size > 1:
            install_abort_hook(self.comm)

    def threads_per_rank(self):
        """Compute threads for this rank.

        ``TMPI_NUM_THREADS`` or ``OMP_NUM_THREADS`` win when set; otherwise the
        cores this process may run on, divided by the ranks on this host
        (at least 1), so ranks sharing a host do not oversubscribe it.

        Returns:
            int: the thread count.
        """
        for var in ("TMPI_NUM_THREADS", "OMP_NUM_THREADS"):
            value = os.environ.get(var)
            if value:
                try:
                    n = int(value)
                except ValueError:
                    raise ValueError(
                        f"{var}={value!r} is not an integer; set it to the "
                        "number of threads each rank should use"
                    ) from None
                if n < 1:
                    raise ValueError(f"{var}={n} must be >= 1")
                return n
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        return max(1, cores // self.local_size)

    def apply_thread_limit(self):
        """Limit this process's compute threads to :attr:`threads`.

        Sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
        ``MKL_NUM_THREADS`` (for libraries loaded later) and, when
        ``threadpoolctl`` is installed, the BLAS/OpenMP pools already loaded.
        Framework thread pools (torch) are set by the adapters. Does nothing
        when the user set the count.

        Returns:
            int: the thread count in force.
        """
        if self.user_set_threads:
            return self.threads
        for var in POOL_VARS:
            os.environ.setdefault(var, str(self.threads))
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            threadpool_limits(self.threads)
        return self.threads

    # Small, non-hot-path collectives on Python objects (start-up checks,
    # epoch metrics). The per-step exchange lives in the exchangers.

    def allgather(self, obj):
        """Gather one small picklable object from every rank, in rank order."""
        return self.comm.allgather(obj)

    def bcast(self, obj, root=0):
        """Broadcast one small picklable object from ``root``."""
        return self.comm.bcast(obj, root=root)

    def bcast_array(self, array, root=0):
        """Broadcast a contiguous numpy array from ``root`` in place."""
        self.comm.Bcast(array, root=root)
        return array

    def allreduce_sum(self, array):
        """Sum a contiguous numpy array over all ranks, in place."""
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def barrier(self):
        """Wait until every rank arrives."""
        self.comm.Barrier()


def get_context(comm=None):
    """Return the shared :class:`Context` for ``comm`` (default COMM_WORLD).

    One context is kept per communicator, so the host layout and thread count
    are computed once.
    """
    key = id(comm) if comm is not None else None
    with _LOCK:
        ctx = _DEFAULT.get(key)
        if ctx is None:
            ctx = Context(comm)
            _DEFAULT[key] = ctx
        return ctx


def install_abort_hook(comm):
    """Make an uncaught exception on this rank end the whole MPI job.

    Wraps the current ``sys.excepthook``: it prints the traceback first,
    then ``comm.Abort(1)`` stops every rank with a non-zero exit status
    instead of leaving the others blocked in a collective. Idempotent; call
    it again after importing a library that replaces ``sys.excepthook``
    without chaining (Theano and PyTensor do) — tmpi's rules and adapters
    do so themselves.

    The traceback is flushed and the hook waits ``ABORT_GRACE_S`` seconds
    before aborting, so that the launcher forwards it before it tears the
    job down.

    An exception with a true ``on_every_rank`` attribute (every rank raises
    it together, like :class:`tmpi_core.checkpoint.Interrupted`) is only
    printed: the ranks end on their own.

    Args:
        comm: the communicator to abort.
    """
    if getattr(sys.excepthook, "_tmpi_abort", False):
        return
    previous = sys.excepthook

    def _abort_hook(exc_type, exc, tb):
        if getattr(exc, "on_every_rank", False):
            # Every rank raises it at the same point (an agreed stop):
            # exit normally, no abort racing the other ranks' reports.
            previous(exc_type, exc, tb)
            return
        try:
            previous(exc_type, exc, tb)
            sys.stderr.flush()
            sys.stdout.flush()
            # The launcher forwards output asynchronously; an immediate
            # abort can end it before the traceback reaches the terminal.
            time.sleep(ABORT_GRACE_S)
        finally:
            comm.Abort(1)

    _abort_hook._tmpi_abort = True
    sys.excepthook = _abort_hook
