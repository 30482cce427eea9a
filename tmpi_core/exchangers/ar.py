"""``ar``: one in-place MPI Allreduce of the fused fp32 buffer."""

import weakref

from tmpi_core.exchangers.base import Exchanger

__all__ = ["AllreduceExchanger", "has_persistent_allreduce"]


def has_persistent_allreduce():
    """True when this MPI and mpi4py offer ``MPI_Allreduce_init`` (MPI-4).

    Probed on ``COMM_SELF`` (local to this process; every rank runs the same
    library, so every rank gets the same answer).
    """
    import numpy as np
    from mpi4py import MPI

    if not hasattr(MPI.Comm, "Allreduce_init") or MPI.Get_version() < (4, 0):
        return False
    probe = np.zeros(1, np.float32)
    try:
        request = MPI.COMM_SELF.Allreduce_init(MPI.IN_PLACE, probe, op=MPI.SUM)
    except NotImplementedError:
        return False
    request.Free()
    return True


class AllreduceExchanger(Exchanger):
    """Sum over ranks with a single in-place ``MPI_Allreduce(SUM)``.

    ``x <- sum_i x_i``: one collective per exchange, nothing allocated per
    call. Where the MPI has persistent collectives (MPI-4
    ``MPI_Allreduce_init``), each buffer gets one persistent request, made on
    its first exchange and reused (``Start``/``Wait``) on every later one.
    MPICH's blocking ``MPI_Allreduce`` allocates a scratch buffer of the
    message size on every call, and above glibc's 32 MiB mmap threshold
    that is a fresh ``mmap`` whose pages fault in each time; the persistent
    request allocates it once (``benchmarks/RESULTS.md``: 2x faster at
    64 MiB, equal below 16 MiB). The price is that scratch buffer, held per
    fused buffer for as long as the buffer lives.

    A request is freed when its buffer is garbage-collected, when the
    buffer's ``data`` array is replaced, or by :meth:`free`; a later
    exchange of the same buffer makes a new one. Requests are made in the
    order buffers are first exchanged, which the rules keep the same on
    every rank.

    Args:
        comm: an ``mpi4py.MPI.Comm``.
        persistent: ``None`` (default): persistent requests where the MPI
            has them, plain ``Allreduce`` otherwise; ``True``: require them;
            ``False``: always plain ``Allreduce``.

    Raises:
        ValueError: for ``persistent=True`` on an MPI without
            ``MPI_Allreduce_init``, or a ``persistent`` that is not a bool
            or ``None``.

    Example:
        >>> ex = AllreduceExchanger(comm)            # persistent where it can
        >>> ex.allreduce_sum(buf); ex.allreduce_sum(buf)   # one request
        >>> ex.free()
    """

    name = "ar"

    def __init__(self, comm, *, persistent=None):
        super().__init__(comm)
        from mpi4py import MPI

        if persistent not in (None, True, False):
            raise ValueError(
                f"persistent={persistent!r} must be None (automatic), True or "
                "False")
        available = has_persistent_allreduce()
        if persistent and not available:
            raise ValueError(
                "persistent=True needs MPI-4 persistent collectives "
                f"(MPI_Allreduce_init); this MPI ({MPI.Get_version()}, "
                f"mpi4py {__import__('mpi4py').__version__}) lacks them. Use "
                "persistent=None to fall back to MPI_Allreduce")
        self.persistent = available if persistent is None else persistent
        self._MPI = MPI
        self._in_place = MPI.IN_PLACE
        self._sum = MPI.SUM
        # id(buffer) -> [data array, request, weakref.finalize]
        self._requests = {}

    def allreduce_sum(self, buffer):
        """Sum ``buffer.data`` over all ranks in place."""
        if self.size == 1:
            return
        if not self.persistent:
            self.comm.Allreduce(self._in_place, buffer.data, op=self._sum)
            return
        entry = self._requests.get(id(buffer))
        if entry is None or entry[0] is not buffer.data:
            entry = self._start_request(buffer)
        request = entry[1]
        request.Start()
        request.Wait()

    def _start_request(self, buffer):
        key = id(buffer)
        if key in self._requests:            # data array replaced
            _release(self._requests, key)
        request = self.comm.Allreduce_init(self._in_place, buffer.data,
                                           op=self._sum)
        # The finalizer holds the dict, not the exchanger: a live buffer
        # keeps no exchanger alive. It runs when the buffer is collected,
        # before its id can be reused.
        done = weakref.finalize(buffer, _release, self._requests, key)
        entry = self._requests[key] = [buffer.data, request, done]
        return entry

    def free(self):
        """Free every persistent request (safe to call twice).

        The exchanger stays usable: a later exchange makes a new request.
        """
        for key in list(self._requests):
            _release(self._requests, key)


def _release(requests, key):
    """Free the request stored under ``key`` and forget it."""
    entry = requests.pop(key, None)
    if entry is None:
        return
    _, request, done = entry
    done.detach()
    from mpi4py import MPI

    if not MPI.Is_finalized() and request != MPI.REQUEST_NULL:
        request.Free()
