"""``hier`` / ``hier16``: sum in shared memory on each host, exchange between
hosts over the network, spread the result on each host again."""

import atexit
import pickle
from collections import namedtuple

import numpy as np

from tmpi_core.exchangers.ar import AllreduceExchanger
from tmpi_core.exchangers.asa16 import HalfPrecisionExchanger
from tmpi_core.exchangers.base import Exchanger
from tmpi_core.exchangers.shm import _Windows, copy_into, host_comm, sum_into

__all__ = ["BETWEEN", "CHUNK_BYTES", "HierarchicalExchanger", "HierarchicalHalfExchanger",
           "HostLayout", "host_layout"]

#: What ``between=`` accepts: the exchanger used among hosts.
BETWEEN = ("ar", "asa16")

#: Default largest chunk, in bytes, one inter-host collective each.
CHUNK_BYTES = 4 * 2**20

HostLayout = namedtuple("HostLayout", "comm host sizes")
HostLayout.__doc__ = """Where the ranks of a communicator live.

Attributes:
    comm: this rank's host communicator (see
        :func:`~tmpi_core.exchangers.shm.host_comm`), ranks in order.
    host: this rank's host index; hosts are numbered by their lowest rank.
    sizes: ranks on each host, by host index (the same list on every rank).
"""


def host_layout(comm):
    """The :class:`HostLayout` of ``comm`` (collective; the caller frees
    ``layout.comm``).

    Raises:
        ValueError: on every rank, for a bad pretend layout (see
            :func:`~tmpi_core.exchangers.shm.host_comm`).
    """
    from mpi4py import MPI

    node = host_comm(comm)
    first = node.allreduce(comm.Get_rank(), op=MPI.MIN)
    firsts = comm.allgather(first)
    hosts = sorted(set(firsts))
    return HostLayout(node, hosts.index(first),
                      [firsts.count(h) for h in hosts])


class _Chunk:
    """Elements ``lo:hi`` of one window, as this rank's lane exchanges them:
    ``data`` (its own segment's, what the between-hosts exchanger reduces,
    like a :class:`~tmpi_core.buffer.FlatBuffer`'s) and ``others`` (the
    same elements in the other segments of the host)."""

    __slots__ = ("data", "others", "between", "__weakref__")

    def __init__(self, window, lo, hi, between):
        self.data, self.others = window.chunk(lo, hi)
        self.between = between


class HierarchicalExchanger(Exchanger):
    """A sum over ranks on several hosts with several ranks each: shared
    memory within a host, the network only between hosts.

    The fused buffer of every rank is its segment of an MPI shared-memory
    window on its host (:meth:`allocate`, as with ``shm``), so the rule packs
    straight into memory the host's ranks share. The buffer is cut into
    chunks, dealt in turn to ``L`` *lanes*; local rank ``l < L`` of every
    host serves lane ``l``. An exchange is: a barrier on each host (every
    segment written); then each lane rank, for each of its chunks, sums the
    chunk of every segment of its host into its own (no message), reduces
    that host sum with the same lane of the other hosts (``between``: an
    ``ar`` Allreduce or ``asa16`` over a communicator of one rank per host),
    and copies the result into the chunk of every other segment of its host;
    a barrier on each host (every chunk everywhere). Every rank gets the
    same bits. Only ``2 (h-1)/h`` times the buffer's bytes cross each host's
    link (``h`` hosts; half that with ``asa16``), against about twice that
    for a flat Allreduce over all ranks, and the host's ranks never copy
    through MPI's buffers.

    With ``L > 1`` lanes the ``L`` inter-host reductions run side by side
    over ``L`` connections, and while one lane has a chunk on the network
    another sums its next chunk in shared memory. Chunks are at most
    ``chunk_bytes`` (default 4 MiB), one collective each: over TCP, single
    messages of 8 MiB or more moved well below the link's rate, while a
    stream of 1-4 MiB chunks kept within a few percent of it
    (``benchmarks/RESULTS.md``).

    A buffer that does not come from :meth:`allocate` still works: it is
    copied into a scratch window and back.

    Strategy names: ``'hier'`` is this exchanger with ``between='ar'``,
    ``'hier16'`` with ``between='asa16'`` (fp16 between hosts, fp32 within:
    the error bound of ``asa16`` with ``p`` the number of hosts, plus fp32
    rounding of the sums on each host). Windows and communicators stay
    allocated while the exchanger lives and are freed by :meth:`free` (at
    interpreter exit at the latest).

    Args:
        comm: an ``mpi4py.MPI.Comm``. Making the exchanger is collective.
        between: ``'ar'`` (default) or ``'asa16'``: the exchange between
            hosts.
        lanes: ranks per host that exchange with other hosts, each for its
            share of the chunks: ``None`` (default) for as many as the host
            with the fewest ranks has, or a whole number from 1 to that.
        chunk_bytes: the largest chunk in bytes (``>= 1024``; default
            4 MiB), or ``None`` for one chunk per lane.

    Raises:
        ValueError: on every rank, for an unknown ``between``, a ``lanes``
            that is not ``None`` or a whole number from 1 to the fewest ranks
            on a host, or a ``chunk_bytes`` that is not ``None`` or a whole
            number ``>= 1024``.

    Example:
        >>> ex = HierarchicalExchanger(comm, between="asa16")
        >>> buf = FlatBuffer(shapes, allocate=ex.allocate)
        >>> buf.pack(grads, scale=1 / comm.Get_size())
        >>> ex.allreduce_sum(buf)                # the mean, on every rank
        >>> ex.free()
    """

    name = "hier"

    def __init__(self, comm, *, between="ar", lanes=None,
                 chunk_bytes=CHUNK_BYTES):
        super().__init__(comm)
        from mpi4py import MPI

        if not isinstance(between, str) or between not in BETWEEN:
            raise ValueError(
                f"between={between!r} must be one of {list(BETWEEN)}: the "
                "exchange between hosts")
        if lanes is not None and (isinstance(lanes, bool)
                                  or not isinstance(lanes, int) or lanes < 1):
            raise ValueError(
                f"lanes={lanes!r} must be None (one per rank of the smallest "
                "host) or a whole number >= 1")
        if chunk_bytes is not None and (
                isinstance(chunk_bytes, bool)
                or not isinstance(chunk_bytes, int) or chunk_bytes < 1024):
            raise ValueError(
                f"chunk_bytes={chunk_bytes!r} must be a whole number of bytes "
                ">= 1024, or None for one chunk per lane")
        layout = host_layout(comm)
        fewest = min(layout.sizes)
        if lanes is not None and lanes > fewest:
            layout.comm.Free()
            raise ValueError(
                f"lanes={lanes} is more than the {fewest} rank(s) of the "
                f"smallest host (ranks per host: {layout.sizes}); use "
                f"lanes=None or a number from 1 to {fewest}")
        self.between = between
        self.name = "hier16" if between == "asa16" else "hier"
        self.lanes = fewest if lanes is None else lanes
        self.chunk_bytes = chunk_bytes
        self.hosts = len(layout.sizes)
        self.host_sizes = layout.sizes
        self._host = layout.comm
        self._local_rank = layout.comm.Get_rank()
        lane = self._local_rank if self._local_rank < self.lanes \
            else MPI.UNDEFINED
        # lane l: local rank l of every host, ordered by host
        self._lane = comm.Split(lane, key=layout.host)
        self._in_lane = lane != MPI.UNDEFINED
        self._windows = _Windows(layout.comm)
        self._plans = {}        # window -> list of this rank's _Chunks
        self._between = {}      # chunk length -> exchanger (asa16 sizes it)
        self._freed = False
        atexit.register(self.free)

    def allocate(self, n, dtype):
        """A zeroed segment of a new shared window on this host, for a fused
        buffer. Collective: every rank calls it with the same ``n`` and
        ``dtype``."""
        return self._windows.allocate(n, dtype).own

    def allreduce_sum(self, buffer):
        """Replace ``buffer.data`` by its sum over all ranks, in place."""
        if self.size == 1:
            return
        data = buffer.data
        window = self._windows.find(data)
        if window is not None:
            self._reduce(window)
            return
        window = self._windows.scratch(data.size, data.dtype)
        np.copyto(window.own, data)
        self._reduce(window)
        np.copyto(data, window.own)

    def _reduce(self, window):
        plan = self._plans.get(window)
        if plan is None:
            plan = self._plans[window] = self._plan(window)
        window.fence()                      # every segment written
        for chunk in plan:
            sum_into(chunk.data, chunk.others)
            chunk.between.allreduce_sum(chunk)
            copy_into(chunk.others, chunk.data)
        window.fence()                      # every chunk's sum everywhere

    def _plan(self, window):
        """This rank's chunks of ``window``: chunk ``k`` goes to lane
        ``k mod L``. The same cut on every host, so each lane's ranks
        exchange the same chunks in the same order."""
        n = window.own.size
        if not self._in_lane:
            return []
        per_chunk = -(-n // self.lanes)                      # ceil
        if self.chunk_bytes is not None:
            per_chunk = min(per_chunk, max(
                1, self.chunk_bytes // window.own.itemsize))
        bounds = [(lo, min(lo + per_chunk, n))
                  for lo in range(0, n, per_chunk)]
        mine = bounds[self._local_rank::self.lanes]
        return [_Chunk(window, lo, hi, self._exchanger_for(hi - lo))
                for lo, hi in mine]

    def _exchanger_for(self, length):
        if self.between == "ar":
            length = None                   # one ar serves every length
        ex = self._between.get(length)
        if ex is None:
            ex = self._between[length] = (
                AllreduceExchanger(self._lane) if self.between == "ar"
                else HalfPrecisionExchanger(self._lane))
        return ex

    def __reduce_ex__(self, protocol):
        # Its MPI windows cannot travel; a PicklingError lets probing
        # serialisers fall back (see SharedMemoryExchanger).
        raise pickle.PicklingError(
            "a HierarchicalExchanger holds MPI shared-memory windows and "
            "communicators and cannot be pickled")

    def free(self):
        """Free the windows, requests and sub-communicators (collective;
        safe to call twice). Buffers made by :meth:`allocate` are invalid
        afterwards, and so is the exchanger."""
        if self._freed:
            return
        self._freed = True
        from mpi4py import MPI

        self._plans.clear()
        for ex in self._between.values():
            ex.free()
        self._between.clear()
        self._windows.free()
        if not MPI.Is_finalized():
            if self._in_lane:
                self._lane.Free()
            self._host.Free()


class HierarchicalHalfExchanger(HierarchicalExchanger):
    """``hier16``: :class:`HierarchicalExchanger` with ``asa16`` (fp16 on
    the wire) between hosts and fp32 shared memory within each.

    Args:
        comm: an ``mpi4py.MPI.Comm``. Making the exchanger is collective.
        lanes, chunk_bytes: as for :class:`HierarchicalExchanger`.
    """

    name = "hier16"

    def __init__(self, comm, *, lanes=None, chunk_bytes=CHUNK_BYTES):
        super().__init__(comm, between="asa16", lanes=lanes,
                         chunk_bytes=chunk_bytes)
