"""``shm``: a sum over the ranks of one host through MPI shared memory."""

import atexit
import os
import pickle

import numpy as np

from tmpi_core.exchangers.base import Exchanger

__all__ = ["PRETEND_HOSTS_ENV", "SharedMemoryExchanger", "host_comm",
           "on_one_host"]

#: Environment variable that groups ranks into pretend hosts, for tests on
#: one machine: comma-separated rank counts, consecutive ranks of the
#: communicator per host (``"2,2"``: ranks 0-1 and 2-3; ``"2,1"``). Unset in
#: normal use: hosts are what ``MPI_COMM_TYPE_SHARED`` finds.
PRETEND_HOSTS_ENV = "TMPI_PRETEND_HOSTS"


def host_comm(comm):
    """The ranks of ``comm`` on this rank's host, as a new communicator
    ordered by rank in ``comm`` (collective; the caller frees it).

    Hosts are found with ``MPI_COMM_TYPE_SHARED``, or read from
    :data:`PRETEND_HOSTS_ENV` where that is set (then every rank must see
    the same value; the ranks really share one machine).

    Raises:
        ValueError: on every rank, for a pretend layout that is not a list
            of positive rank counts summing to the size of ``comm``.
    """
    from mpi4py import MPI

    pretend = os.environ.get(PRETEND_HOSTS_ENV, "").strip()
    if not pretend:
        return comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    size = comm.Get_size()
    try:
        counts = [int(c) for c in pretend.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or sum(counts) != size:
        raise ValueError(
            f"{PRETEND_HOSTS_ENV}={pretend!r} must be positive rank counts "
            f"per pretend host summing to the {size} ranks, e.g. "
            f"{','.join(['1'] * size)!r}; unset it to use the real hosts")
    rank, host = comm.Get_rank(), 0
    while rank >= sum(counts[:host + 1]):
        host += 1
    return comm.Split(host, key=rank)


def on_one_host(comm):
    """True on every rank when all ranks of ``comm`` share one host
    (see :func:`host_comm`); collective."""
    from mpi4py import MPI

    node = host_comm(comm)
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
        self._windows = _Windows(comm)
        self._freed = False
        atexit.register(self.free)

    def allocate(self, n, dtype):
        """A zeroed segment of a new shared window, for a fused buffer.

        Collective: every rank calls it with the same ``n`` and ``dtype``.
        """
        return self._windows.allocate(n, dtype).own

    def allreduce_sum(self, buffer):
        """Replace ``buffer.data`` by its sum over all ranks, in place."""
        if self.size == 1:
            return
        data = buffer.data
        window = self._windows.find(data)
        if window is not None:
            window.reduce()
            return
        window = self._windows.scratch(data.size, data.dtype)
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
        self._windows.free()


def _address(a):
    return a.__array_interface__["data"][0]


class _Windows:
    """The shared windows an exchanger made on one host's communicator:
    those handed out by :meth:`allocate`, found again by their memory, and
    scratch windows for buffers that live elsewhere (one per size and
    type). Shared by the ``shm`` and hierarchical exchangers."""

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self._allocated = {}    # address of this rank's segment -> _Window
        self._scratch = {}      # (n, dtype) -> _Window

    def allocate(self, n, dtype):
        """A new window of ``n`` elements per rank (collective)."""
        window = _Window(self.comm, self.rank, n, dtype)
        self._allocated[window.address] = window
        return window

    def find(self, data):
        """The window whose own segment is ``data``, else ``None``."""
        window = self._allocated.get(_address(data))
        if window is not None and window.own.size == data.size \
                and window.own.dtype == data.dtype:
            return window
        return None

    def scratch(self, n, dtype):
        """The scratch window for ``n`` elements of ``dtype`` (made on first
        use: collective then, in the same order on every rank)."""
        key = (n, np.dtype(dtype).str)
        window = self._scratch.get(key)
        if window is None:
            window = self._scratch[key] = _Window(self.comm, self.rank, n,
                                                  dtype)
        return window

    def free(self):
        """Free every window (collective; safe to call twice)."""
        for window in [*self._allocated.values(), *self._scratch.values()]:
            window.free()
        self._allocated.clear()
        self._scratch.clear()


def sum_into(acc, others):
    """``acc += sum(others)``, in order: the sum of one chunk."""
    for other in others:
        np.add(acc, other, out=acc)


def copy_into(others, acc):
    """Copy ``acc`` into every array of ``others``: spread one chunk."""
    for other in others:
        np.copyto(other, acc)


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
        # chunk ``rank``: summed here, its sum copied into the others
        self._mine, self._theirs = self.chunk(min(rank * c, n),
                                              min((rank + 1) * c, n))

    def chunk(self, lo, hi):
        """Views of elements ``lo:hi``: this rank's, and every other rank's
        in rank order (for :func:`sum_into` and :func:`copy_into`)."""
        own = self.own[lo:hi]
        return own, [s[lo:hi] for s in self.segments if s is not self.own]

    def fence(self):
        """Wait until every rank has reached this point, with every rank's
        writes to the window visible to all (collective)."""
        self.win.Sync()
        self.comm.Barrier()
        self.win.Sync()

    def reduce(self):
        """Sum every segment over ranks, in place (collective)."""
        self.fence()                # every segment holds its rank's values
        sum_into(self._mine, self._theirs)
        copy_into(self._theirs, self._mine)
        self.fence()                # every chunk's sum is everywhere

    def free(self):
        self.segments = self._mine = self._theirs = self.own = None
        self.win.Unlock_all()
        self.win.Free()
