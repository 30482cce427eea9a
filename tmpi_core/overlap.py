"""Gradient averaging overlapped with the backward pass, bucket by bucket.

A backward pass produces gradients last layer first. Waiting for all of
them before exchanging leaves the network idle while the processor
computes, then the processor idle while the network moves. Here the fused
gradient buffer is cut into *buckets* of about ``bucket_bytes``, laid out
in the order the gradients arrive; as soon as every gradient of a bucket
has been packed, that bucket's allreduce starts (non-blocking, persistent
where the MPI has ``MPI_Allreduce_init``) while the backward pass goes on.
The optimizer step waits for the last one.

Buckets start strictly in their order, on every rank, so the ranks' MPI
calls always match even when a gradient never arrives on some rank (a
parameter the loss did not reach): :meth:`GradientBuckets.finish` packs it
as zeros and starts what is left.
"""

import numpy as np

from tmpi_core.buffer import FlatBuffer

__all__ = ["GradientBuckets"]


class GradientBuckets:
    """A fused gradient buffer exchanged in buckets as gradients arrive.

    Made by :meth:`tmpi_core.BSP.bucketed`. Per step: :meth:`begin`, then
    :meth:`add` for each gradient as it is ready (any order), then
    :meth:`finish`, which returns the averages.

    Args:
        shapes: the gradients' shapes, in parameter order.
        comm: an ``mpi4py.MPI.Comm``.
        bucket_bytes: a bucket closes once it holds this many bytes (a
            tensor is never split; the last bucket may be smaller).
        order: parameter indices in the order their gradients are expected
            (default: reversed, as a backward pass produces them).
        dtype: float32 (default) or float64.
        persistent: use persistent requests (``MPI_Allreduce_init``) where
            the MPI has them.
        timer: a function returning a context manager that times (and
            guards) the final wait, or None.

    Raises:
        ValueError: for an empty ``shapes``, a bad ``bucket_bytes`` or an
            ``order`` that is not a permutation.
    """

    def __init__(self, shapes, *, comm, bucket_bytes, order=None,
                 dtype=np.float32, persistent=True, timer=None):
        from mpi4py import MPI

        n = len(shapes)
        if n == 0:
            raise ValueError("no gradients to exchange")
        if isinstance(bucket_bytes, bool) or not isinstance(
                bucket_bytes, (int, np.integer)) or bucket_bytes < 1:
            raise ValueError(
                f"bucket_bytes={bucket_bytes!r} must be an integer >= 1")
        order = list(range(n - 1, -1, -1)) if order is None else list(order)
        if sorted(order) != list(range(n)):
            raise ValueError(f"order={order!r} must be a permutation of "
                             f"range({n})")
        self._MPI = MPI
        self.comm = comm
        self.size = comm.Get_size()
        self._timer = timer
        self.layout = FlatBuffer([tuple(shapes[i]) for i in order],
                                 dtype=dtype, tail=1)
        position = {i: k for k, i in enumerate(order)}
        #: the averaged gradients in parameter order (views)
        self.views = [self.layout.views[position[i]] for i in range(n)]
        # cut the layout into buckets of whole tensors
        itemsize = np.dtype(dtype).itemsize
        self._bucket_of = [0] * n
        bounds, start, filled, b = [], 0, 0, 0
        offsets = self.layout.offsets
        for k, i in enumerate(order):
            self._bucket_of[i] = b
            filled += int(offsets[k + 1] - offsets[k]) * itemsize
            if filled >= bucket_bytes and k < n - 1:
                bounds.append((start, int(offsets[k + 1])))
                start, filled, b = int(offsets[k + 1]), 0, b + 1
        bounds.append((start, self.layout.data.size))      # tail included
        self.bounds = bounds
        self._members = [0] * len(bounds)
        for i in range(n):
            self._members[self._bucket_of[i]] += 1
        self._remaining = list(self._members)
        self._added = [False] * n
        data = self.layout.data
        self._chunks = [data[a:z] for a, z in bounds]
        self._requests = None
        if persistent and hasattr(MPI.Comm, "Allreduce_init") \
                and MPI.Get_version() >= (4, 0):
            try:
                self._requests = [comm.Allreduce_init(MPI.IN_PLACE, c,
                                                      op=MPI.SUM)
                                  for c in self._chunks]
            except NotImplementedError:
                self._requests = None
        self._started = []
        self._open = 0              # the first started bucket not yet done
        self._next = 0
        self._scale = 1.0 / self.size
        self._present = True

    @property
    def buckets(self):
        """How many buckets the buffer is cut into."""
        return len(self.bounds)

    def begin(self, *, present=True):
        """Start a step. ``present=False``: this rank has no batch of its
        own (uneven data): it contributes zeros and is not counted."""
        self._remaining[:] = self._members
        self._added[:] = [False] * len(self._added)
        self._started.clear()
        self._open = 0
        self._next = 0
        self._present = present
        self.layout.tail[0] = 1.0 if present else 0.0

    def add(self, index, grad):
        """Pack gradient ``index`` (a numpy array, or None for zeros); start
        every bucket that is now complete, in order."""
        if self._added[index]:
            return          # a second backward without no_sync: first wins
        view = self.views[index]
        if grad is None or not self._present:
            view.fill(0.0)
        else:
            np.multiply(grad, self._scale, out=view, casting="same_kind")
        self._added[index] = True
        self._remaining[self._bucket_of[index]] -= 1
        self._start_ready()

    def poke(self):
        """Let MPI progress the buckets in flight (cheap; call it from the
        framework's hooks while it computes)."""
        # one request at a time: MPICH's Testall reports an error for a
        # persistent collective that completes inside it
        started = self._started
        while self._open < len(started) and started[self._open].Test():
            self._open += 1

    def pending(self):
        """True between the first :meth:`add` of a step and :meth:`finish`."""
        return any(self._added)

    def finish(self):
        """Pack zeros for gradients that never came, start what is left,
        wait for every bucket and rescale.

        Returns:
            the averaged gradients (views, parameter order), or None when no
            rank had a batch this step.
        """
        for i, done in enumerate(self._added):
            if not done:
                self.add(i, None)
        if self._timer is None:
            self._MPI.Request.Waitall(self._started)
        else:
            with self._timer():
                self._MPI.Request.Waitall(self._started)
        self._added[:] = [False] * len(self._added)
        self._started.clear()
        self._open = 0
        count = int(round(float(self.layout.tail[0])))
        if count == 0:
            return None
        if count != self.size:
            values = self.layout.data[:-1]
            np.multiply(values, self.size / count, out=values)
        return self.views

    def free(self):
        """Free the persistent requests (safe twice)."""
        for request in self._requests or ():
            request.Free()
        self._requests = None

    def _start_ready(self):
        while self._next < len(self.bounds) \
                and self._remaining[self._next] == 0:
            k = self._next
            if self._requests is not None:
                request = self._requests[k]
                request.Start()
            else:
                request = self.comm.Iallreduce(
                    self._MPI.IN_PLACE, self._chunks[k], op=self._MPI.SUM)
            self._started.append(request)
            self._next += 1
