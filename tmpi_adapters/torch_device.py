"""The GPU path of :mod:`tmpi_adapters.torch`: buckets that stay on the device.

On CUDA tensors, copying every gradient to the host for MPI and back costs
more than the exchange. Here the fused gradient buffer is a tensor on the
model's device and its buckets are summed by ``torch.distributed``: NCCL
for CUDA tensors. The process group is built from the MPI communicator
(rank 0's address and a free port are broadcast over MPI), so ``mpiexec``
stays the only launcher. The same code runs with the ``gloo`` backend on
CPU tensors, which is how everything but the NCCL call itself is tested.
"""

import os
import socket

import torch

__all__ = ["DeviceBuckets", "local_device", "process_group"]

_GROUPS = {}


def local_device(ctx=None):
    """The device this rank should use: ``cuda:<local rank % GPUs>`` when
    CUDA is available, else the CPU.

    Args:
        ctx: a :class:`tmpi_core.Context` (default ``COMM_WORLD``'s).
    """
    from tmpi_core import get_context

    ctx = get_context() if ctx is None else ctx
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda", ctx.local_rank
                            % torch.cuda.device_count())
    return torch.device("cpu")


def process_group(ctx, backend):
    """torch.distributed's default process group over ``ctx``'s ranks,
    bootstrapped over MPI (made once per backend; collective).

    Rank 0 takes a free TCP port on its host's address
    (``TMPI_MASTER_ADDR`` overrides the address) and broadcasts both.

    Args:
        ctx: the :class:`tmpi_core.Context` of the rule.
        backend: ``'nccl'`` or ``'gloo'``.

    Returns:
        the process group.

    Raises:
        ValueError: for another backend, or one torch does not have here.
    """
    import torch.distributed as dist

    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend={backend!r} must be 'nccl' or 'gloo'")
    available = (dist.is_nccl_available() if backend == "nccl"
                 else dist.is_gloo_available())
    if not dist.is_available() or not available:
        raise ValueError(f"this torch has no {backend} backend")
    if backend in _GROUPS:
        return _GROUPS[backend]
    address = None
    if ctx.rank == 0:
        address = os.environ.get("TMPI_MASTER_ADDR") or _host_address()
        with socket.socket() as s:
            s.bind((address, 0))
            address = (address, s.getsockname()[1])
    host, port = ctx.bcast(address, root=0)
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=f"tcp://{host}:{port}",
                                rank=ctx.rank, world_size=ctx.size)
        group = dist.group.WORLD
    else:
        group = dist.new_group(list(range(ctx.size)), backend=backend)
    _GROUPS[backend] = group
    return group


def _host_address():
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class DeviceBuckets:
    """:class:`tmpi_core.overlap.GradientBuckets` on device tensors.

    The same contract (``begin``/``add``/``poke``/``finish``/``free``) on a
    fused buffer that is one tensor on ``device``; each full bucket starts
    a non-blocking ``all_reduce`` in the process group, in bucket order.
    The count of ranks with a batch travels in the last element, as on the
    host.

    Args:
        shapes: the gradients' shapes, in parameter order.
        group: a torch.distributed process group (:func:`process_group`).
        size: the number of ranks.
        device: where the buffer lives.
        bucket_bytes: bytes per bucket.
        order: parameter indices in arrival order (default: reversed).
    """

    def __init__(self, shapes, *, group, size, device, bucket_bytes,
                 order=None):
        import torch.distributed as dist

        n = len(shapes)
        if n == 0:
            raise ValueError("no gradients to exchange")
        order = list(range(n - 1, -1, -1)) if order is None else list(order)
        self._dist = dist
        self.group = group
        self.size = size
        counts = [int(torch.Size(shapes[i]).numel()) for i in order]
        offsets = [0]
        for c in counts:
            offsets.append(offsets[-1] + c)
        total = offsets[-1] + 1                      # + the count
        self.data = torch.zeros(total, dtype=torch.float32, device=device)
        self.views = [None] * n
        for k, i in enumerate(order):
            self.views[i] = self.data[offsets[k]:offsets[k + 1]].view(
                tuple(shapes[i]))
        self._bucket_of = [0] * n
        bounds, start, filled, b = [], 0, 0, 0
        for k, i in enumerate(order):
            self._bucket_of[i] = b
            filled += counts[k] * 4
            if filled >= bucket_bytes and k < n - 1:
                bounds.append((start, offsets[k + 1]))
                start, filled, b = offsets[k + 1], 0, b + 1
        bounds.append((start, total))
        self.bounds = bounds
        self._chunks = [self.data[a:z] for a, z in bounds]
        self._members = [0] * len(bounds)
        for i in range(n):
            self._members[self._bucket_of[i]] += 1
        self._remaining = list(self._members)
        self._added = [False] * n
        self._works = []
        self._next = 0
        self._present = True

    @property
    def buckets(self):
        """How many buckets the buffer is cut into."""
        return len(self.bounds)

    def begin(self, *, present=True):
        """Start a step (see ``GradientBuckets.begin``)."""
        self._remaining[:] = self._members
        self._added = [False] * len(self._added)
        self._works = []
        self._next = 0
        self._present = present
        self.data[-1] = 1.0 if present else 0.0

    def add(self, index, grad):
        """Pack gradient ``index`` (a tensor on the device, or None) scaled
        by ``1/p``; start every complete bucket, in order."""
        if self._added[index]:
            return
        view = self.views[index]
        if grad is None or not self._present:
            view.zero_()
        else:
            torch.mul(grad, 1.0 / self.size, out=view)
        self._added[index] = True
        self._remaining[self._bucket_of[index]] -= 1
        while self._next < len(self.bounds) \
                and self._remaining[self._next] == 0:
            self._works.append(self._dist.all_reduce(
                self._chunks[self._next], group=self.group, async_op=True))
            self._next += 1

    def poke(self):
        """Nothing to do: the backend progresses on its own streams."""

    def pending(self):
        """True between the first :meth:`add` of a step and :meth:`finish`."""
        return any(self._added)

    def finish(self):
        """Pack zeros for missing gradients, start what is left, wait, and
        rescale by the count of ranks with a batch. Returns the averaged
        views (parameter order), or None when no rank had a batch."""
        for i, done in enumerate(self._added):
            if not done:
                self.add(i, None)
        for work in self._works:
            work.wait()
        self._works = []
        self._added = [False] * len(self._added)
        count = int(round(float(self.data[-1])))
        if count == 0:
            return None
        if count != self.size:
            self.data[:-1].mul_(self.size / count)
        return self.views

    def free(self):
        """Drop the buffer (the process group lives on)."""
        self._chunks = []
