"""``shm``: a sum over the ranks of one host through MPI shared memory."""

import atexit
import pickle

import numpy as np

from tmpi_core.exchangers.base import Exchanger

__all__ = ["SharedMemoryExchanger", "on_one_host"]


def on_one_host(comm):
    """True on every rank when all ranks of ``comm`` share one host
    (``MPI_COMM_TYPE_SHARED``); collective."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    here = node.Get_size() == comm.Get_size()
    node.Free()
    return comm.allreduce(here, op=MPI.LAND)


class SharedMemoryExchanger(Exchanger):
    """Reduce in place in an MPI-3 shared-memory window (ranks on one host).

    Each rank's fused buffer *is* its segment of one shared window
    (``MPI_Win_allocate_shared``), handed to the rule by :meth:`allocate`,
    so packing the gradients writes them straight into memory every rank
    can read. An exchange is then: a barrier (every segment written); rank
    ``j`` sums chunk ``j`` of every segment into its own and copies the sum
    into chunk ``j`` of the others; a barrier (every sum in place). No MPI
    message moves a byte: on one host the copies into and out of MPI's own
    shared buffers, which an ``MPI_Allreduce`` makes, are gone. Summation
    order: a chunk's owner adds the other segments in rank order to its
    own, and every rank receives that one result, so every rank holds the
    same bits.

    A buffer that does not come from :meth:`allocate` still works: it is
    copied into a scratch segment and back (the speed of ``ar``, roughly).

    Needs every rank of ``comm`` on one host (``MPI_COMM_TYPE_SHARED``);
    across hosts use ``ar``. Windows stay allocated while the exchanger
    lives and are freed by :meth:`free` (at interpreter exit at the
    latest); buffers from :meth:`allocate` must not be used after that.

    Args:
        comm: an ``mpi4py.MPI.Comm`` whose ranks share one host.

    Raises:
        ValueError: on every rank, if the ranks span more than one host.
    """

    name = "shm"

    def __init__(self, comm):
        super().__init__(comm)
        self.rank = comm.Get_rank()
        if not on_one_host(comm):
            raise ValueError(
                "strategy='shm' needs every rank on one host (MPI shared "
                f"memory); this job's {self.size} ranks span several. Use "
                "strategy='ar'")
        self._windows = {}      # address of a rank's segment -> _Window
        self._scratch = {}      # (n, dtype) -> _Window for foreign buffers
        self._freed = False
        atexit.register(self.free)

    def allocate(self, n, dtype):
        """A zeroed segment of a new shared window, for a fused buffer.

        Collective: every rank calls it with the same ``n`` and ``dtype``.
        """
        window = _Window(self.comm, self.rank, n, dtype)
        self._windows[window.address] = window
        return window.own

    def allreduce_sum(self, buffer):
        """Replace ``buffer.data`` by its sum over all ranks, in place."""
        if self.size == 1:
            return
        data = buffer.data
        window = self._windows.get(_address(data))
        if window is not None and window.own.size == data.size \
                and window.own.dtype == data.dtype:
            window.reduce()
            return
        key = (data.size, data.dtype.str)
        window = self._scratch.get(key)
        if window is None:
            window = self._scratch[key] = _Window(self.comm, self.rank,
                                                  data.size, data.dtype)
        np.copyto(window.own, data)
        window.reduce()
        np.copyto(data, window.own)

    def __reduce_ex__(self, protocol):
        # Its MPI windows cannot travel. A PicklingError (not mpi4py's
        # ValueError) lets probing serialisers, such as the numba backend
        # of PyTensor checking the exchange Op's closure, fall back.
        raise pickle.PicklingError(
            "a SharedMemoryExchanger holds MPI shared-memory windows and "
            "cannot be pickled")

    def free(self):
        """Free the windows (collective; safe to call twice). Buffers made
        by :meth:`allocate` are invalid afterwards."""
        if self._freed:
            return
        self._freed = True
        for window in [*self._windows.values(), *self._scratch.values()]:
            window.free()
        self._windows.clear()
        self._scratch.clear()


def _address(a):
    return a.__array_interface__["data"][0]


class _Window:
    """One shared window: every rank's segment of ``n`` elements."""

    def __init__(self, comm, rank, n, dtype):
        from mpi4py import MPI

        dtype = np.dtype(dtype)
        p = comm.Get_size()
        self.comm = comm
        self.win = MPI.Win.Allocate_shared(max(n, 1) * dtype.itemsize,
                                           dtype.itemsize, comm=comm)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self.segments = [
            np.frombuffer(self.win.Shared_query(j)[0], dtype=dtype, count=n)
            for j in range(p)]
        self.own = self.segments[rank]
        self.own.fill(0)
        self.address = _address(self.own)
        c = -(-n // p)                                   # ceil(n / p)
        lo, hi = min(rank * c, n), min((rank + 1) * c, n)
        self._mine = [s[lo:hi] for s in self.segments]   # chunk ``rank``
        self._others = [j for j in range(p) if j != rank]
        self._rank = rank

    def reduce(self):
        win, comm = self.win, self.comm
        win.Sync()
        comm.Barrier()              # every segment holds its rank's values
        win.Sync()
        acc = self._mine[self._rank]
        for j in self._others:
            np.add(acc, self._mine[j], out=acc)
        for j in self._others:
            np.copyto(self._mine[j], acc)
        win.Sync()
        comm.Barrier()              # every chunk's sum is everywhere
        win.Sync()

    def free(self):
        self.segments = self._mine = self.own = None
        self.win.Unlock_all()
        self.win.Free()
