"""PyTorch adapter: data-parallel training of a plain torch loop over MPI.

Usage::

    import tmpi_adapters.torch as tmpi_torch

    model, optimizer = build()
    sync = tmpi_torch.distributed(model, optimizer, "bsp")
    for x, y in tmpi_torch.shard_loader(dataset, batch_size=64):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()     # buckets exchanged meanwhile
        optimizer.step()                    # waits for the last bucket
    sync.finalize()                         # every rank: the final model

Launch with ``mpiexec -n 4 python train.py``.

Why this shape: the loop stays the user's own, as with Horovod's
``DistributedOptimizer``, but nothing is wrapped. ``distributed`` hooks the
model's parameters (``register_post_accumulate_grad_hook``: each gradient is
packed into its bucket the moment backward has finished it, and a full
bucket starts its allreduce at once, as torch DDP does) and the optimizer
(``register_step_pre_hook`` waits for the buckets and writes the averages
into ``.grad``; ``register_step_post_hook`` runs the rule's step). The model
and the optimizer stay the objects they were, so learning-rate schedulers,
``state_dict``, ``torch.compile`` and checkpoint code keep working; the
returned :class:`TorchSync` holds the rule, ``no_sync()`` for gradient
accumulation, checkpoints and ``finalize()``.

On CUDA tensors (the GPU path) the gradient buckets live on the device and
are summed by NCCL through torch.distributed, whose process group is built
from the MPI communicator (:mod:`tmpi_adapters.torch_device`); the CPU path
stays MPI. Put each rank's model on :func:`local_device` first.
"""

import contextlib

import numpy as np
import torch

from tmpi_core import make_recorder, make_rule
from tmpi_core.broadcast import broadcast_arrays
from tmpi_core.checks import check_same_across_ranks, describe_arrays
from tmpi_core.data import shard_indices
from tmpi_core.checkpoint import ResumeError, from_json_array, json_array
from tmpi_core.state import ModelIO, TrainingState, ordered_arrays

__all__ = ["TorchSync", "distributed", "local_device", "shard_loader",
           "ShardSampler"]

#: Default bucket size: 4 MiB, chosen by benchmarks/vs_ddp.py (see
#: benchmarks/RESULTS.md).
BUCKET_MB = 4.0


def local_device():
    """The device this rank should put its model on: ``cuda:<local rank
    % GPUs>`` where CUDA is available (one GPU per rank of a host), else
    the CPU. ``model.to(tmpi_torch.local_device())`` before
    :func:`distributed`; a model the user placed stays where it is."""
    from tmpi_adapters.torch_device import local_device as _local

    return _local()


def distributed(model, optimizer, rule="bsp", *, overlap=None,
                bucket_mb=BUCKET_MB, progress="none", backend=None,
                checkpoint=None, checkpoint_keep=2, comm=None, record=None,
                **options):
    """Synchronise a torch model and optimizer across MPI ranks with a rule.

    Collective: call it on every rank after building the model and the
    optimizer. It checks that every rank built the same model, gives every
    rank rank 0's parameters, buffers and optimizer state, and hooks the
    model and the optimizer (see the module docstring).

    Args:
        model: a ``torch.nn.Module``.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        rule: ``'bsp'`` (default), ``'easgd'``, ``'gosgd'`` or a
            :class:`tmpi_core.Rule`.
        overlap: BSP on gradients: exchange bucket by bucket during the
            backward pass (``True``), or the whole fused buffer at
            ``optimizer.step()`` (``False``; needed for ``nonfinite`` and
            the ``asa16``/``shm``/``hier`` strategies). Default ``None``:
            overlap when the ranks span several hosts, not when they share
            one (there the exchange is cheap and the hooks cost more than
            they hide: ``benchmarks/RESULTS.md``).
        bucket_mb: bucket size in MiB for ``overlap``.
        progress: ``'none'`` (default): MPI moves the started buckets
            inside its own calls (starting the next bucket, the final
            wait); ``'test'``: every gradient hook also tests the started
            requests. Measured side by side (``benchmarks/RESULTS.md``),
            testing was no faster at the default bucket size, and MPICH's
            progress thread (``MPIR_CVAR_ASYNC_PROGRESS=1``) cost compute.
        backend: how BSP gradients move: ``None`` (default) is MPI for a
            model on the CPU and ``'nccl'`` (torch.distributed, buckets on
            the device) for a model on CUDA; ``'gloo'`` takes the
            torch.distributed path on the CPU.
        checkpoint: a directory for :meth:`TorchSync.save` /
            :meth:`TorchSync.restore`, or None.
        checkpoint_keep: newest checkpoints to keep.
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.
        record: a run directory (or a :class:`tmpi_core.Recorder`): each
            exchange is timed; call ``sync.record(loss=...)`` per step.
        **options: the rule's options (``mode='params'``, ``every=4``,
            ``tau=4``, ``p=0.1``, ``strategy='ar'``, ``nonfinite='raise'``).

    Returns:
        TorchSync: the handle of the run.

    Raises:
        ValueError: on every rank, for a bad argument, an unknown rule or
            option, or models that differ across ranks.

    Example:
        >>> sync = tmpi_torch.distributed(model, optimizer, "bsp")
    """
    return TorchSync(model, optimizer, rule, overlap=overlap,
                     bucket_mb=bucket_mb, progress=progress, backend=backend,
                     checkpoint=checkpoint,
                     checkpoint_keep=checkpoint_keep, comm=comm,
                     record=record, **options)


class TorchSync:
    """The handle :func:`distributed` returns (see there for arguments).

    Attributes:
        model, optimizer: what was synchronised.
        rule: the :class:`tmpi_core.Rule`.
        state: the :class:`tmpi_core.TrainingState` (checkpoints, stop
            agreement).
        buckets: the :class:`tmpi_core.overlap.GradientBuckets` when
            gradients are exchanged overlapped, else None.
    """

    def __init__(self, model, optimizer, rule="bsp", *, overlap=None,
                 bucket_mb=BUCKET_MB, progress="none", backend=None,
                 checkpoint=None, checkpoint_keep=2, comm=None, record=None,
                 **options):
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model={type(model).__name__} must be a "
                             "torch.nn.Module")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer={type(optimizer).__name__} must be "
                             "a torch.optim.Optimizer")
        if overlap is not None and not isinstance(overlap, bool):
            raise ValueError(f"overlap={overlap!r} must be True, False or "
                             "None (across hosts only)")
        if progress not in ("none", "test"):
            raise ValueError(f"progress={progress!r} must be 'none' or "
                             "'test'")
        self.progress = progress
        if isinstance(bucket_mb, bool) or not isinstance(
                bucket_mb, (int, float)) or not bucket_mb > 0:
            raise ValueError(f"bucket_mb={bucket_mb!r} must be a number of "
                             "MiB > 0")
        if isinstance(rule, str):
            options["comm"] = comm
        self.rule = make_rule(rule, **options)
        self.model = model
        self.optimizer = optimizer
        ctx = self.rule.context
        if not ctx.user_set_threads:
            torch.set_num_threads(ctx.apply_thread_limit())
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self._params = [p for p in model.parameters() if p.requires_grad]
        stray = [n for n, p in model.named_parameters()
                 if p.requires_grad and id(p) not in owned]
        if stray:
            raise ValueError(
                f"parameters {stray[:5]} of the model are not in the "
                "optimizer; pass the optimizer that trains this model")
        devices = {p.device for p in self._params}
        if len(devices) > 1:
            raise ValueError(f"the model's parameters are on {devices}; "
                             "put the whole model on one device")
        device = devices.pop() if devices else torch.device("cpu")
        if backend not in (None, "nccl", "gloo"):
            raise ValueError(f"backend={backend!r} must be None (MPI on the "
                             "CPU, NCCL on CUDA), 'nccl' or 'gloo'")
        if backend is None and device.type == "cuda":
            backend = "nccl"
        if backend == "nccl" and device.type != "cuda":
            raise ValueError("backend='nccl' needs the model on a CUDA "
                             "device (model.to(tmpi_torch.local_device()))")
        self.device = device
        self.backend = backend
        self._buffers = [b for b in model.buffers()
                         if torch.is_floating_point(b)]
        if record is not None:
            self.rule.recorder = make_recorder(record, comm=comm)
        names = ([n for n, p in model.named_parameters() if p.requires_grad]
                 + [n for n, b in model.named_buffers()
                    if torch.is_floating_point(b)])
        synced = self._params + self._buffers
        _write(synced, self.rule.start(_read(synced), names=names))
        self._broadcast_optimizer()
        self.state = TrainingState(self.rule, _TorchIO(self),
                                   directory=checkpoint, keep=checkpoint_keep)
        self._sync_grads = True
        self._zero_grads = {}
        self.buckets = None
        self._hooks = []
        if overlap is None:
            from tmpi_core.exchangers.shm import on_one_host

            overlap = self.rule.exchanges_gradients and not on_one_host(
                ctx.comm)
        #: whether gradients are exchanged during the backward pass
        self.overlap = overlap
        shapes = [tuple(p.shape) for p in self._params]
        bucket_bytes = int(bucket_mb * (1 << 20))
        if self.rule.exchanges_gradients and backend is not None:
            from tmpi_adapters.torch_device import (DeviceBuckets,
                                                    process_group)

            self.rule.check_bucketed(shapes)
            self.buckets = DeviceBuckets(
                shapes, group=process_group(ctx, backend), size=ctx.size,
                device=device,
                bucket_bytes=bucket_bytes if overlap else 1 << 62)
        elif self.rule.exchanges_gradients and overlap:
            self.buckets = self.rule.bucketed(shapes,
                                              bucket_bytes=bucket_bytes)
        if self.buckets is not None:
            self.buckets.begin()
            index = {id(p): i for i, p in enumerate(self._params)}
            for p in self._params:
                self._hooks.append(p.register_post_accumulate_grad_hook(
                    self._grad_ready_hook(index[id(p)])))
        self._hooks.append(optimizer.register_step_pre_hook(self._before_step))
        self._hooks.append(optimizer.register_step_post_hook(self._after_step))

    # -- the loop ------------------------------------------------------------
    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally: backward passes inside exchange
        nothing; the first backward after it exchanges the sum (as torch
        DDP's ``no_sync``). Only the step after that exchanges."""
        previous, self._sync_grads = self._sync_grads, False
        try:
            yield
        finally:
            self._sync_grads = previous

    def batches(self, batches):
        """This rank's batches, ending every rank's epoch at the same step
        when ranks hold different numbers of them
        (:class:`tmpi_core.UnevenBatches`): a rank out of data runs the
        step on a filler batch and applies the average of those that had
        one (BSP), or skips its steps (GoSGD, asynchronous EASGD)."""
        return self.state.batches(batches)

    def serve(self):
        """Asynchronous EASGD: on the server rank, serve until every worker
        is done (saving the center with a checkpoint directory) and return
        True; elsewhere return False at once. Train only where False."""
        return self.state.serve(every_exchanges=100)

    def record(self, loss=None, **metrics):
        """Record the step just taken (with ``record=``): call it after each
        ``optimizer.step()``. The step's calc is the time since the
        previous call less the exchange; :meth:`finalize` writes the
        summary (``tmpi-report RUN_DIR`` plots it).

        Raises:
            ValueError: without ``record=``.
        """
        if self.rule.recorder is None:
            raise ValueError("pass record=RUN_DIR to distributed() first")
        self.rule.recorder.end_step(loss, **metrics)

    def finalize(self):
        """Give every rank the rule's final model (BSP: one more average,
        buffers included; EASGD: the center; GoSGD: the consensus) and
        remove the hooks. Collective; call once after training."""
        synced = self._params + self._buffers
        _write(synced, self.rule.finalize(_read(synced)))
        if self.rule.recorder is not None:
            self.rule.recorder.close()
        self.close()

    def close(self):
        """Remove the hooks and free the exchange's resources."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.buckets is not None:
            self.buckets.free()
            self.buckets = None
        self.state.close()
        self.rule.close()

    # -- checkpoints ---------------------------------------------------------
    def save(self, *, epoch, batch=0, interrupted=False):
        """Write a checkpoint: ``model.state_dict()``, the optimizer's, the
        rule's state and the random states (collective; atomic)."""
        return self.state.save(epoch=epoch, batch=batch,
                               interrupted=interrupted)

    def restore(self):
        """Load the newest checkpoint; returns the epoch to resume at."""
        return self.state.restore()

    def stop_requested(self):
        """True on every rank, at the same step, once any rank got
        SIGINT/SIGTERM after ``sync.state.arm()`` (one tiny non-blocking
        allreduce per call)."""
        return self.state.stop_requested()

    # -- hooks ---------------------------------------------------------------
    def _grad_ready_hook(self, index):
        buckets = self.buckets
        on_device = self.backend is not None
        test = self.progress == "test"

        def hook(param):
            if self._sync_grads:
                if not buckets.pending():
                    buckets.begin(present=self.rule.has_batch)
                grad = param.grad.detach()
                buckets.add(index, grad if on_device else grad.numpy())
            if test:
                buckets.poke()
        return hook

    def _before_step(self, optimizer, args, kwargs):
        rule = self.rule
        if rule.exchanges_gradients:
            if self.buckets is not None:
                if not self.buckets.pending():
                    self.buckets.begin(present=rule.has_batch)
                averaged = self.buckets.finish()
            else:
                averaged = rule.on_gradients(
                    [self._zeros(i) if p.grad is None
                     else p.grad.detach().numpy()
                     for i, p in enumerate(self._params)])
            if averaged is None:            # skipped on every rank
                for p in self._params:
                    p.grad = None
                return
            on_device = self.backend is not None
            for p, a in zip(self._params, averaged):
                a = a if on_device else torch.from_numpy(a)
                if p.grad is None:
                    p.grad = a.to(device=p.device, dtype=p.dtype, copy=True)
                else:
                    p.grad.copy_(a)
        elif not rule.has_batch:
            for p in self._params:          # uneven data: no own update
                p.grad = None

    def _zeros(self, index):
        # a parameter the loss did not reach: exchange zeros in its place
        if index not in self._zero_grads:
            self._zero_grads[index] = np.zeros(
                tuple(self._params[index].shape), np.float32)
        return self._zero_grads[index]

    def _after_step(self, optimizer, args, kwargs):
        synced = self._params + self._buffers
        new = self.rule.end_step(lambda: _read(synced))
        if new is not None:
            _write(synced, new)

    def _broadcast_optimizer(self):
        tensors = _optimizer_tensors(self.optimizer)
        values = [t.detach().cpu().numpy() for _, t in tensors]
        ctx = self.rule.context
        check_same_across_ranks(ctx, describe_arrays(
            values, [k for k, _ in tensors]), "optimizer state")
        for (_, t), v in zip(tensors, broadcast_arrays(ctx, values)):
            with torch.no_grad():
                t.copy_(torch.from_numpy(np.asarray(v)))


class _TorchIO(ModelIO):
    """The model and optimizer as a :class:`tmpi_core.state.ModelIO`."""

    def __init__(self, sync):
        self.sync = sync

    def read_synchronised(self):
        return _read(self.sync._params + self.sync._buffers)

    def write_synchronised(self, arrays):
        _write(self.sync._params + self.sync._buffers, arrays)

    def _split(self):
        buffers = {id(b) for b in self.sync.model.buffers()}
        return [(f"model/{i}", t, id(t) in buffers) for i, t in
                enumerate(self.sync.model.state_dict(keep_vars=True).values())]

    def read_local(self):
        """The model's buffers (batch-norm statistics): every rank's own."""
        return {k: t.detach().cpu().numpy().copy()
                for k, t, buffer in self._split() if buffer}

    def read_all(self):
        out = {k: t.detach().cpu().numpy().copy()
               for k, t, buffer in self._split() if not buffer}
        tensors = _optimizer_tensors(self.sync.optimizer)
        for i, (_, t) in enumerate(tensors):
            out[f"optimizer/{i}"] = t.detach().cpu().numpy().copy()
        # torch makes an optimizer's state at its first step: the names let
        # a fresh optimizer be given its state back
        out["optimizer_names"] = json_array([k for k, _ in tensors])
        return out

    def load_all(self, arrays, path):
        model = self.sync.model
        targets = list(model.state_dict().values())
        values = ordered_arrays(arrays, "model", targets, path, what="model",
                                names=list(model.state_dict()))
        with torch.no_grad():
            for t, v in zip(targets, values):
                t.copy_(torch.from_numpy(np.asarray(v)))
        optimizer = self.sync.optimizer
        if "optimizer_names" not in arrays:
            return
        names = from_json_array(arrays["optimizer_names"])
        params = [p for g in optimizer.param_groups for p in g["params"]]
        mine = dict(_optimizer_tensors(optimizer))
        if mine and sorted(mine) != sorted(names):
            raise ResumeError(
                f"checkpoint {path} holds optimizer state {names[:4]}...; "
                f"this optimizer has {list(mine)[:4]}...: resume with the "
                "optimizer that wrote it")
        values = ordered_arrays(arrays, "optimizer", [
            _Shape(arrays[f"optimizer/{i}"]) for i in range(len(names))],
            path, what="optimizer")
        with torch.no_grad():
            for name, value in zip(names, values):
                head, key = name.split(".", 1)
                index = int(head[len("param"):])
                if index >= len(params):
                    raise ResumeError(
                        f"checkpoint {path} holds optimizer state for "
                        f"parameter {index}; this optimizer has "
                        f"{len(params)} parameters")
                tensor = torch.from_numpy(np.array(value))
                if name in mine:
                    if tuple(mine[name].shape) != tuple(tensor.shape):
                        raise ResumeError(
                            f"checkpoint {path}: optimizer state {name} has "
                            f"shape {tuple(tensor.shape)} there and "
                            f"{tuple(mine[name].shape)} here")
                    mine[name].copy_(tensor)
                else:
                    optimizer.state[params[index]][key] = tensor


class _Shape:
    __slots__ = ("shape",)

    def __init__(self, array):
        self.shape = np.shape(array)


def _optimizer_tensors(optimizer):
    """The optimizer's state tensors in a fixed order: (name, tensor)."""
    index = {id(p): i for i, p in enumerate(
        p for g in optimizer.param_groups for p in g["params"])}
    out = []
    for p, state in optimizer.state.items():
        for key in sorted(state):
            value = state[key]
            if torch.is_tensor(value):
                out.append((f"param{index[id(p)]}.{key}", value))
    out.sort(key=lambda kv: (int(kv[0].split(".")[0][5:]), kv[0]))
    return out


def _read(tensors):
    # a view on the CPU; a host copy of a device tensor (rules other than
    # BSP on gradients stage parameters through the host)
    return [t.detach().cpu().numpy() for t in tensors]


def _write(tensors, arrays):
    with torch.no_grad():
        for t, a in zip(tensors, arrays):
            t.copy_(torch.from_numpy(np.asarray(a)))


class ShardSampler(torch.utils.data.Sampler):
    """This rank's equal, strided share of a dataset's indices, for a
    ``DataLoader`` (the last ``len % ranks`` samples are dropped so that
    every rank runs the same number of steps); reshuffled per epoch with
    :meth:`set_epoch` when ``shuffle``.

    Args:
        length: the dataset's length.
        shuffle: permute the indices every epoch (the same permutation on
            every rank, from ``seed`` and the epoch).
        seed: the permutation's seed.
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.
    """

    def __init__(self, length, *, shuffle=False, seed=0, comm=None):
        from tmpi_core import get_context

        ctx = get_context(comm)
        self.rank, self.size = ctx.rank, ctx.size
        self.length = int(length)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Use the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self):
        order = (np.random.default_rng(self.seed + self.epoch).permutation(
            self.length) if self.shuffle else np.arange(self.length))
        mine = shard_indices(self.length, self.rank, self.size)
        return iter(order[mine].tolist())

    def __len__(self):
        return len(shard_indices(self.length, self.rank, self.size))


def shard_loader(dataset, *, batch_size, shuffle=False, seed=0, comm=None,
                 **loader_options):
    """A ``DataLoader`` over this rank's equal share of ``dataset``.

    Args:
        dataset: a map-style torch dataset (with ``len``).
        batch_size: per-rank batch size.
        shuffle, seed: see :class:`ShardSampler`.
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.
        **loader_options: more ``DataLoader`` options (``num_workers``).

    Returns:
        ``torch.utils.data.DataLoader``.
    """
    sampler = ShardSampler(len(dataset), shuffle=shuffle, seed=seed,
                           comm=comm)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                       sampler=sampler, **loader_options)
