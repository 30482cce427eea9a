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
    ``MPI_Allreduce_init``), a buffer of ``persistent_min_bytes`` or more
    gets one persistent request, made on its first exchange and reused
    (``Start``/``Wait``) on every later one. On 2 ranks of one host with
    MPICH it is 2.3-3x faster from 32 MiB up: the blocking ``MPI_Allreduce``
    allocates a scratch buffer on every call, which beyond glibc's mmap
    threshold is a fresh ``mmap`` whose pages fault in every time (16,385
    minor faults per call at 128 MiB), and even without those faults it is
    1.5-1.8x slower there; the persistent request sets up its scratch and
    schedule once. Below 8 MiB, between other work that leaves the caches
    cold, the persistent request was 0-14 % slower than the blocking call;
    from 8 to 24 MiB they were equal (``benchmarks/RESULTS.md``). The price
    is the request's scratch buffer, held while its fused buffer lives.

    A request is freed when its buffer is garbage-collected, when the
    buffer's ``data`` array is replaced, or by :meth:`free`; a later
    exchange of the same buffer makes a new one. Requests are made in the
    order buffers are first exchanged, which the rules keep the same on
    every rank.

    Args:
        comm: an ``mpi4py.MPI.Comm``.
        persistent: ``None`` (default): persistent requests for buffers of
            ``persistent_min_bytes`` or more where the MPI has them, plain
            ``Allreduce`` otherwise; ``True``: persistent requests for every
            buffer (an MPI without them raises); ``False``: always plain
            ``Allreduce``.
        persistent_min_bytes: the size from which ``persistent=None`` uses
            a persistent request (default 8 MiB).

    Raises:
        ValueError: for ``persistent=True`` on an MPI without
            ``MPI_Allreduce_init``, a ``persistent`` that is not a bool or
            ``None``, or a negative ``persistent_min_bytes``.

    Example:
        >>> ex = AllreduceExchanger(comm)            # persistent where it pays
        >>> ex.allreduce_sum(buf); ex.allreduce_sum(buf)   # one request
        >>> ex.free()
    """

    name = "ar"

    def __init__(self, comm, *, persistent=None,
                 persistent_min_bytes=8 * 2**20):
        super().__init__(comm)
        from mpi4py import MPI

        if persistent not in (None, True, False):
            raise ValueError(
                f"persistent={persistent!r} must be None (automatic), True or "
                "False")
        if not isinstance(persistent_min_bytes, int) or \
                persistent_min_bytes < 0:
            raise ValueError(
                f"persistent_min_bytes={persistent_min_bytes!r} must be an "
                "integer >= 0")
        available = has_persistent_allreduce()
        if persistent and not available:
            raise ValueError(
                "persistent=True needs MPI-4 persistent collectives "
                f"(MPI_Allreduce_init); this MPI ({MPI.Get_version()}, "
                f"mpi4py {__import__('mpi4py').__version__}) lacks them. Use "
                "persistent=None to fall back to MPI_Allreduce")
        self.persistent = available if persistent is None else persistent
        # persistent=True: every buffer; None: from this size up
        self.persistent_min_bytes = (0 if persistent else
                                     persistent_min_bytes)
        self._MPI = MPI
        self._in_place = MPI.IN_PLACE
        self._sum = MPI.SUM
        # id(buffer) -> [data array, request, weakref.finalize]
        self._requests = {}

    def allreduce_sum(self, buffer):
        """Sum ``buffer.data`` over all ranks in place."""
        if self.size == 1:
            return
        if not self.persistent or \
                buffer.data.nbytes < self.persistent_min_bytes:
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
