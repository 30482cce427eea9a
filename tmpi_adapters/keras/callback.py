"""``TMPISync``: the Keras 3 callback that makes ``model.fit`` data-parallel."""

import numbers
import os
import warnings

import keras
import numpy as np

from tmpi_adapters.keras import _bridge
from tmpi_adapters.keras.checkpoint import KerasIO, TMPIBackupAndRestore
from tmpi_adapters.keras.uneven import UnevenData
from tmpi_core import (broadcast_arrays, check_same_across_ranks,
                       describe_arrays, get_context, make_recorder, make_rule)
from tmpi_core.state import TrainingState

__all__ = ["TMPISync"]


class TMPISync(keras.callbacks.Callback):
    """Synchronise a Keras model across MPI ranks with a tmpi rule.

    At train begin: checks that every rank built the same model and runs the
    same number of steps per epoch, broadcasts rank 0's weights and optimizer
    state, and (``'grads'`` rules) hooks the optimizer so gradients are
    averaged before every update. At batch end: the rule's parameter exchange.
    At epoch end: loss, metrics and validation metrics are global averages on
    every rank. At train end: every rank holds the same final model. It can
    be reused across repeated ``fit`` calls.

    Put it first in the callback list, launch with ``mpiexec -n P python
    train.py``, and give each rank its shard of the data
    (:func:`tmpi_adapters.keras.shard`).

    Asynchronous EASGD (``TMPISync('easgd', tau=4)``): rank 0 serves the
    center and does not train (its ``fit`` ends after the workers', with one
    empty step, and its validation evaluates the center); workers never wait
    for each other, so their logs stay local. When ``fit`` returns, every
    rank holds the center. ``synchronous=True`` trains on every rank and
    averages logs as BSP does.

    Every Keras 3 backend, with its default train step: gradient averaging
    (``TMPISync('bsp')``, ``mode='grads'``) runs eagerly on torch, and from
    inside the compiled step on JAX (an ordered host callback in the jitted
    step) and TensorFlow (a ``tf.numpy_function`` in the ``tf.function``;
    a step XLA would compile is compiled without XLA, with a warning). The
    step is traced again at train begin with the exchange in it, and
    without it after ``fit``. torch's ``jit_compile=True`` raises a
    ``ValueError`` at train begin instead of silently training
    unsynchronised; ``mode='params'`` works everywhere.

    Checkpoints (``checkpoint=DIR``): rank 0 writes the model, optimizer
    state, rule state, next epoch and random states atomically at the end
    of every ``checkpoint_every``-th epoch, and once more when the job is
    interrupted (Ctrl-C on ``mpiexec``, SIGTERM): the ranks agree within
    two batch ends, stop at the same batch, write it and raise
    :class:`tmpi_core.Interrupted` (a ``KeyboardInterrupt``).
    Training resumes from the newest checkpoint in ``DIR`` by itself, at
    its epoch. It is a shorthand for a
    :class:`~tmpi_adapters.keras.TMPIBackupAndRestore` after this callback.

    Uneven data (ranks with different numbers of batches):
    ``model.fit(sync.uneven(data), callbacks=[sync])`` ends every rank's
    epoch at the same step (see :meth:`uneven`).

    Attributes:
        rule: the :class:`tmpi_core.Rule`.
        state: the run's :class:`tmpi_core.TrainingState` (checkpoints,
            stop agreement).

    Args:
        rule: rule name (``'bsp'``, ``'easgd'``) or a :class:`tmpi_core.Rule`.
        average_metrics: make epoch logs global averages (default True).
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.
        checkpoint: a directory for checkpoints (resumed from when it holds
            one), or None.
        checkpoint_every: write a checkpoint every this many epochs.
        checkpoint_keep: how many of the newest checkpoints to keep.
        overlap: torch backend, gradient averaging: exchange the gradients
            bucket by bucket while the backward pass runs (each gradient is
            packed the moment torch has finished it), instead of all at
            once before the update. Same results; see
            ``benchmarks/RESULTS.md`` for when it pays.
        bucket_mb: bucket size in MiB with ``overlap``.
        record: a run directory (or a :class:`tmpi_core.Recorder`) to record
            every training step's calc / comm / wait seconds, epoch, loss
            and metrics in (the batch logs, as Keras reports them); calc is
            the batch's time less comm and wait. Rank 0 writes
            ``summary.json`` and prints a summary when ``fit`` ends; plot
            with ``tmpi-report RUN_DIR``.
        **options: the rule's options, e.g. ``mode='params', every=4,
            lr_scaling='linear', warmup_steps=100, nonfinite='raise'``.

    Raises:
        ValueError: for an unknown rule or a bad option, on every rank,
            before any communication.

    Example:
        >>> model.fit(x, y, callbacks=[TMPISync("bsp")],
        ...           verbose=tmpi_keras.verbose())
    """

    def __init__(self, rule="bsp", *, average_metrics=True, comm=None,
                 checkpoint=None, checkpoint_every=1, checkpoint_keep=2,
                 record=None, overlap=False, bucket_mb=4.0, **options):
        super().__init__()
        if not isinstance(average_metrics, bool):
            raise ValueError(
                f"average_metrics={average_metrics!r} must be True or False")
        if not isinstance(overlap, bool):
            raise ValueError(f"overlap={overlap!r} must be True or False")
        if isinstance(bucket_mb, bool) or not isinstance(
                bucket_mb, (int, float)) or not bucket_mb > 0:
            raise ValueError(f"bucket_mb={bucket_mb!r} must be a number of "
                             "MiB > 0")
        self.overlap = overlap
        self.bucket_mb = bucket_mb
        self._buckets = None
        self._grad_hooks = []
        if isinstance(rule, str):
            options["comm"] = comm
        self.rule = make_rule(rule, **options)
        self.average_metrics = average_metrics
        self.ctx = get_context(comm)
        if not self.ctx.user_set_threads:
            _bridge.set_framework_threads(self.ctx.apply_thread_limit())
        self._weights = None
        self._remove_hook = None
        self._base_lr = None
        self._lr_factor = None
        self._in_fit = False
        self._last_test_batch = None
        self._server_step = None
        self._epoch = None
        self._batch = 0
        self._uneven = None
        self._cut_epoch = False
        self._accumulate = None
        self._retraced = False
        self._plain_step = self._synced_step = None
        self._metrics_built = False
        self._stats_averaged = False
        if record is not None:
            self.rule.recorder = make_recorder(record, comm=comm)
        self.state = TrainingState(self.rule, KerasIO(None, None),
                                   meta={"backend": _bridge.backend_name()})
        self._backup = None
        if checkpoint is not None:
            # named as this callback's arguments before the other checks
            for name, value in (("checkpoint_every", checkpoint_every),
                                ("checkpoint_keep", checkpoint_keep)):
                if isinstance(value, bool) or not isinstance(value, int) \
                        or value < 1:
                    raise ValueError(f"{name}={value!r} must be an integer "
                                     ">= 1")
            if not isinstance(checkpoint, (str, os.PathLike)) \
                    or not str(checkpoint):
                raise ValueError(f"checkpoint={checkpoint!r} must be a "
                                 "directory path (str or os.PathLike) or "
                                 "None")
            self._backup = TMPIBackupAndRestore(
                checkpoint, sync=self, every=checkpoint_every,
                keep=checkpoint_keep)

    def resume_epoch(self):
        """The epoch the newest checkpoint resumes at (0 without one).
        Collective: call it on every rank. ``fit`` starts there by itself;
        this is for scripts that want to know."""
        if self.state.store is None:
            raise ValueError("resume_epoch() needs TMPISync(checkpoint=DIR) "
                             "or a TMPIBackupAndRestore")
        ckpt = self.state.peek()
        return int(ckpt.meta["epoch"]) if ckpt is not None else 0

    def uneven(self, data):
        """Wrap this rank's data so that ranks with different numbers of
        batches end every epoch at the same step.

        A rank that runs out tells the others through the stop agreement
        (one round per batch, looking two batches ahead); until every rank
        is out it runs steps on a filler batch (its last real one, with
        sample weights 0) whose update it does not apply: under BSP it
        applies the average of the ranks that had a batch, ``(1/c) sum
        g_i``, so every rank stays equal. The epoch ends after the step of
        the rank with the most batches. The loss Keras logs on a rank
        counts its filler steps as 0; compiled metrics are exact.

        Args:
            data: a ``keras.utils.PyDataset`` (with or without a length:
                its ``__getitem__`` raising ``IndexError`` ends it), a list
                of batches, or a function returning a fresh iterator of
                batches per epoch. Batches are ``(x, y)`` or
                ``(x, y, sample_weight)`` tuples of arrays.

        Returns:
            an endless ``torch.utils.data.DataLoader`` to pass to ``fit``
            (Keras restarts it every epoch; this callback ends the epoch).

        Raises:
            ValueError: for unsupported ``data``, or without torch.
        """
        self._uneven = UnevenData(data)
        return self._uneven.loader()

    # -- training -------------------------------------------------------
    def on_train_begin(self, logs=None):
        model = self.model
        self._in_fit = True
        grads_rule = self.rule.exchanges_gradients
        if grads_rule:
            self._reach_gradients(model)
        self._check_same_steps(
            self.params.get("steps") if self.params else None, "training")
        self._weights = _bridge.float_weights(model)
        names = [v.path for v in self._weights]
        _bridge.write(self._weights,
                      self.rule.start(_bridge.read(self._weights), names=names))
        self._broadcast_optimizer()
        self.state.io = KerasIO(model, self._weights)
        if self._backup is not None:
            self._backup.set_model(model)
            self._backup.on_train_begin(logs)
        accumulate = getattr(model.optimizer, "gradient_accumulation_steps",
                             None)          # a Keras attribute, not ours
        if grads_rule and accumulate and self.overlap:
            raise ValueError(
                "TMPISync(overlap=True) with the optimizer's "
                f"gradient_accumulation_steps={accumulate}: each backward "
                "pass would exchange; drop overlap (the exchange then runs "
                "once per applied update)")
        self._accumulate = accumulate
        if grads_rule and accumulate:
            self._remove_hook = _bridge.install_gradient_hook(
                model.optimizer, self._exchange_accumulated,
                accumulators=True)
        elif grads_rule and self.overlap:
            self._start_buckets(model)
            self._remove_hook = _bridge.install_gradient_hook(
                model.optimizer, self._finish_buckets)
        elif grads_rule:
            self._remove_hook = _bridge.install_gradient_hook(
                model.optimizer, self._exchange)
        elif self._uneven is not None:
            self._remove_hook = _bridge.install_gradient_hook(
                model.optimizer, self._skip_without_batch)
        if self._remove_hook is not None and not _bridge.runs_eagerly(model):
            self._use_synced_step(model)
        if self.rule.lr_scaling is not None:
            self._start_lr_scaling()

    def on_train_batch_begin(self, batch, logs=None):
        if self._role() == "server" and self._server_step is None:
            self._serve()       # after every on_train_begin (a restore)
            return
        if self._uneven is not None:
            self.rule.has_batch = self._uneven.has(batch)
        if self.rule.recorder is not None:
            self.rule.recorder.begin_step()
        if self._base_lr is not None:
            factor = self.rule.lr_factor()
            if factor != self._lr_factor:
                self.model.optimizer.learning_rate.assign(
                    self._base_lr * factor)
                self._lr_factor = factor

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batch = 0
        if self._uneven is not None and self._role() != "server":
            self._uneven.on_epoch_begin()
            decided = self.state.agreement.decide_now(
                has_data=self._uneven.has(0))
            if decided.with_data == 0:
                raise ValueError("no rank has a batch in this epoch")
            self.state.agreement.round(has_data=self._uneven.has(1))

    def on_train_batch_end(self, batch, logs=None):
        if self._role() == "server":
            return
        if self._remove_hook is not None:
            _bridge.wait_for_step()     # its exchange ran on every rank
        new = self.rule.end_step(self._read_weights)
        if new is not None:
            _bridge.sync_model_state(self.model)
            _bridge.write(self._weights, new)
        self.rule.has_batch = True
        self._stats_averaged = False
        if self.rule.recorder is not None:
            self._record(logs)
        self._batch = batch + 1
        self._agree(batch)
        steps = self.params.get("steps") if self.params else None
        last = (steps and batch == steps - 1) or self._cut_epoch
        if self._global_metrics() and last:
            self._sum_metric_states()

    def _agree(self, batch):
        # One round of the stop agreement per batch: signals when a
        # checkpoint is kept, end of data with uneven(); decided one
        # round late, so every rank stops at the same batch.
        state = self.state
        if self._uneven is not None:
            # this round is about batch + 2; it decides batch + 1
            decided = state.agreement.round(
                has_data=self._uneven.has(batch + 2))
            if decided is not None and decided.with_data == 0:
                self._cut_epoch = True
                self.model.stop_training = True
        elif state.store is not None:
            state.stop_requested()
        if state.interrupted:
            self.model.stop_training = True

    def on_test_begin(self, logs=None):
        if self._role() != "peer":
            return          # asynchronous: ranks do not meet during training
        # Inside fit, validation reuses fit's callback params (train steps);
        # the validation step count lives on the cached eval iterator.
        steps = self.params.get("steps") if self.params else None
        if self._in_fit:
            iterator = getattr(self.model, "_eval_epoch_iterator", None)
            steps = getattr(iterator, "num_batches", None)
        self._check_same_steps(steps, "evaluation")
        self._last_test_batch = steps - 1 if steps else None
        if self._in_fit:
            self._average_statistics()

    def on_test_batch_end(self, batch, logs=None):
        if self._global_metrics() and batch == self._last_test_batch:
            self._sum_metric_states()

    def on_epoch_end(self, epoch, logs=None):
        if self._cut_epoch:
            # the data ran out on every rank: this epoch ends, not fit
            self._cut_epoch = False
            self.state.agreement.complete()   # the round about the next
            if not self.state.interrupted:
                self.model.stop_training = False
        if self._global_metrics() and logs:
            self._average_logs(logs)
        # before any checkpoint of this epoch (tmpi's, ModelCheckpoint's)
        self._average_statistics()
        if self._backup is not None:
            self._backup.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        self._in_fit = False
        if self._remove_hook is not None:
            self._remove_hook()
            self._remove_hook = None
        if self._retraced:
            # the step with the exchange in it stays for the next fit
            self._synced_step = (self._plain_step, self.model.train_function)
            self.model.train_function = self._plain_step
            self._retraced = False
        self._stop_buckets()
        state = self.state
        _bridge.write(self._weights,
                      self.rule.finalize(_bridge.read(self._weights)))
        if self.rule.recorder is not None:
            self.rule.recorder.close()
        interrupted = state.interrupted or bool(
            self._role() == "server" and state.agreement.signals)
        if state.interrupted and self._role() == "peer" \
                and state.store is not None:
            state.save(epoch=self._epoch, batch=self._batch,
                       interrupted=True)
        state.close()
        if self._server_step is not None:
            self.model.train_function = None      # Keras rebuilds it
            self._server_step = None
        if self._backup is not None:
            self._backup.on_train_end(logs)
        self.rule.close()
        if interrupted:
            raise state.interruption()

    def _reach_gradients(self, model):
        # Gradient averaging runs between backward pass and update: eagerly,
        # or from inside the compiled step on JAX and TensorFlow.
        backend = _bridge.backend_name()
        if backend == "tensorflow" and not _bridge.runs_eagerly(model) \
                and model.jit_compile:
            # numpy_function cannot run under XLA: compile the step without
            # it (XLA is Keras' default on a GPU only)
            warnings.warn(
                f"TMPISync({self.rule.name!r}, mode='grads') exchanges "
                "gradients on the host from inside the train step, which XLA "
                "cannot compile: the train step is compiled with "
                "jit_compile=False", stacklevel=3)
            model.jit_compile = False
        if not _bridge.can_exchange_gradients(model):
            raise ValueError(
                f"TMPISync({self.rule.name!r}, mode='grads') averages "
                "gradients between backward pass and update, which the "
                f"{backend} backend's compiled step (jit_compile=True) does "
                "not let out; compile the model with jit_compile=False, or "
                "use mode='params'")

    def _use_synced_step(self, model):
        # A compiled step is traced once, so it must be traced again with
        # the hook in it (after fit, Keras' own step comes back). The next
        # fit reuses this step while Keras' is the same one (a compile()
        # makes a new one), instead of tracing and compiling again.
        plain = model.train_function
        if self._synced_step is not None and self._synced_step[0] is plain:
            model.train_function = self._synced_step[1]
        else:
            model.make_train_function(force=True)
        self._plain_step = plain
        self._retraced = True

    def _exchange(self, grads, accumulated=None, iteration=None):
        return self.rule.on_gradients(grads)

    def _exchange_accumulated(self, grads, accumulated, iteration):
        # The optimizer's gradient_accumulation_steps: Keras adds each
        # step's gradients to its accumulators and updates every N steps
        # with (g + acc) / N. Exchange once per update: on that step the
        # local total g + acc is averaged across ranks, and Keras is handed
        # avg - acc, so that its (g' + acc) / N is the global average / N.
        steps = self._accumulate
        # Keras' own test of an update step (``iteration`` is the
        # optimizer's step counter; its public ``iterations`` counts
        # updates when accumulating)
        if (iteration + 1) % steps:
            return grads                    # accumulate locally
        totals = [g + a for g, a in zip(grads, accumulated)]
        averaged = self.rule.on_gradients(totals)
        if averaged is None:
            return None
        return [avg - a for avg, a in zip(averaged, accumulated)]

    def _start_buckets(self, model):
        # torch backend: a Keras variable's value is a torch Parameter, so
        # torch tells us when each gradient is complete during backward
        if _bridge.backend_name() != "torch":
            raise ValueError(
                "TMPISync(overlap=True) needs the torch backend (it hooks "
                "torch's backward pass); drop overlap on "
                f"{_bridge.backend_name()}")
        variables = list(model.trainable_variables)
        if self._buckets is None:
            self._buckets = self.rule.bucketed(
                [tuple(v.shape) for v in variables],
                bucket_bytes=int(self.bucket_mb * (1 << 20)))
        buckets, rule = self._buckets, self.rule

        def hook_for(index):
            def hook(param):
                if not buckets.pending():
                    buckets.begin(present=rule.has_batch)
                buckets.add(index, param.grad.detach().numpy())
            return hook

        self._grad_hooks = [v.value.register_post_accumulate_grad_hook(
            hook_for(i)) for i, v in enumerate(variables)]

    def _finish_buckets(self, grads, accumulated=None, iteration=None):
        # the optimizer's apply: every bucket started during backward
        buckets = self._buckets
        if not buckets.pending():
            buckets.begin(present=self.rule.has_batch)
        return buckets.finish()

    def _stop_buckets(self):
        for hook in self._grad_hooks:
            hook.remove()
        self._grad_hooks = []
        if self._buckets is not None:
            self._buckets.free()
            self._buckets = None

    def _skip_without_batch(self, grads, accumulated=None, iteration=None):
        # uneven data, a rule that does not average gradients: a rank
        # without a batch of its own applies no update
        return grads if self.rule.has_batch else None

    # -- helpers ------------------------------------------------------------
    def _role(self):
        return self.rule.role

    def _read_weights(self):
        _bridge.sync_model_state(self.model)
        return _bridge.read(self._weights)

    def _record(self, logs):
        # The batch logs Keras reports (loss, metrics: running means over
        # the epoch so far), the scalars only.
        metrics = {k: v for k, v in (logs or {}).items()
                   if isinstance(v, numbers.Number) or np.ndim(v) == 0}
        self.rule.recorder.end_step(epoch=self._epoch, **metrics)

    def _global_metrics(self):
        # Asynchronous ranks never wait for each other, so no collective
        # may run during training: each worker keeps its local logs.
        return self.average_metrics and self._role() == "peer"

    def _serve(self):
        # The server does not train: it serves the center until every
        # worker has finished (saving it, with a checkpoint directory),
        # takes the center, and runs one empty step so fit ends (its
        # validation then evaluates the center).
        restored = self.state.restored
        self.state.serve(
            steps_per_epoch=self.params.get("steps") if self.params else None,
            start_epoch=int(restored.meta["epoch"]) if restored else 0)
        self.model.stop_training = True
        model = self.model

        def step(*args):
            if len(args) == 2:          # JAX's step: (state, data) in and out
                return {}, args[0]
            if _bridge.backend_name() == "tensorflow" \
                    and not self._metrics_built:
                # TensorFlow builds the compiled metrics in the first train
                # step, and fit's epoch logs need them: evaluate one batch
                # (the weights do not change)
                self._metrics_built = True
                return model.test_step(next(args[0]))
            return {}

        self._server_step = step
        self.model.train_function = self._server_step

    def _gather(self, point, value):
        # allgather with the point of fit each rank is at: a rank that
        # validates while another does not meets it in a different hook,
        # and both must say so instead of misreading each other's values.
        everyone = self.ctx.allgather((point, value))
        points = {r: p for r, (p, _) in enumerate(everyone)}
        if len(set(points.values())) > 1:
            raise ValueError(
                f"ranks reached different points of fit ({points}); every "
                "rank must use the same validation setting (validation_data, "
                "validation_split, validation_freq) and call fit/evaluate "
                "with TMPISync the same number of times")
        return [v for _, v in everyone]

    def _check_same_steps(self, steps, phase):
        everyone = self._gather(f"{phase} steps", steps)
        if phase == "training" and set(everyone) == {0}:
            raise ValueError("no rank has a batch to train on (fit got no "
                             "data)")
        if len(set(everyone)) > 1:
            raise ValueError(
                f"ranks would run different numbers of {phase} steps "
                f"({dict(enumerate(everyone))}); a rank that finishes early "
                "leaves the others waiting. Give every rank an equal shard: "
                "tmpi_adapters.keras.shard((x, y)) or ShardedPyDataset(ds)"
            )
        if steps is None and phase == "training":
            warnings.warn(
                "the number of steps per epoch is unknown (a generator "
                "without len()); every rank must yield the same number of "
                "batches or the job will hang", stacklevel=3)

    def _broadcast_optimizer(self):
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            # TensorFlow builds it at its first update; its state must be
            # compared and broadcast before that
            optimizer.build(self.model.trainable_variables)
        if optimizer is None or not optimizer.variables:
            return
        variables = list(optimizer.variables)
        values = _bridge.read(variables)
        check_same_across_ranks(
            self.ctx, describe_arrays(values, [v.path for v in variables]),
            "optimizer variables")
        _bridge.write(variables, broadcast_arrays(self.ctx, values))

    def _start_lr_scaling(self):
        lr = self.model.optimizer.learning_rate
        if not hasattr(lr, "assign"):
            raise ValueError(
                "lr_scaling='linear' needs a constant learning rate; the "
                f"optimizer's is {type(lr).__name__}. Scale your schedule "
                "by the number of ranks yourself, or drop lr_scaling")
        if self._base_lr is None:
            self._base_lr = float(np.asarray(lr.numpy()))
        self._lr_factor = None

    def _sum_metric_states(self):
        # Metric states (total/count, confusion counts) are sums: adding them
        # over ranks makes every metric's result the global one, so the epoch
        # logs Keras computes next are global on every rank.
        variables = []
        seen = set()
        for metric in self.model.metrics:
            for v in metric.variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    variables.append(v)
        values = _bridge.read(variables)
        # Before the sum: ranks that compiled different metrics would add
        # unlike buffers (an MPI truncation error or garbage).
        try:
            check_same_across_ranks(
                self.ctx, describe_arrays(values, [v.path for v in variables]),
                "metric variables")
        except ValueError as e:
            raise ValueError(f"{e}: compile it with the same loss and "
                             "metrics on every rank") from None
        self._reduce(variables, values)

    def _average_statistics(self):
        # Batch-norm moving statistics (the model's non-trainable float
        # weights) are every rank's own during training. Validation and
        # checkpoints see their mean over ranks, as the final model does.
        # They are running averages, linear in each step's batch moments,
        # so averaging them now and again ends where one average at the
        # end would; the trainable weights never read them in training.
        if self._stats_averaged or self._role() != "peer" \
                or not self.rule.lockstep:
            return
        _bridge.sync_model_state(self.model)
        variables = [v for v in _bridge.float_weights(self.model)
                     if not v.trainable]
        self._reduce(variables, _bridge.read(variables), mean=True)
        self._stats_averaged = True

    def _reduce(self, variables, values, mean=False):
        # one allreduce (sum or mean) over ranks of all the variables
        if not variables:
            return
        flat = np.concatenate([np.ravel(a).astype(np.float64) for a in values])
        self.ctx.allreduce_sum(flat)
        if mean:
            flat /= self.ctx.size
        offset = 0
        for v, a in zip(variables, values):
            n = a.size
            v.assign(flat[offset:offset + n].reshape(a.shape).astype(a.dtype))
            offset += n

    def _average_logs(self, logs):
        keys = sorted(k for k, v in logs.items()
                      if isinstance(v, numbers.Number) or np.ndim(v) == 0)
        local = {k: float(logs[k]) for k in keys}
        everyone = self._gather("epoch logs", local)
        if any(sorted(d) != keys for d in everyone):
            raise ValueError(
                "ranks report different log keys "
                f"{[sorted(d) for d in everyone]}; every rank must compile "
                "the same metrics and use the same validation setting")
        for k in keys:
            logs[k] = float(np.mean([d[k] for d in everyone]))
