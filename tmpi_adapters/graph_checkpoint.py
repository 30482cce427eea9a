"""Checkpoint and resume for Theano/Lasagne and PyTensor training loops.

The loop is yours, so the checkpointer is a small object you call from it::

    updates = tmpi_lasagne.distributed(lasagne.updates.momentum(...))
    ckpt = tmpi_lasagne.Checkpointer(updates, "run/ckpt")
    start = ckpt.restore()                  # 0, or the epoch to resume at
    for epoch in range(start, epochs):
        for xb, yb in batches(epoch):
            train(xb, yb)
            if ckpt.stop_requested():       # Ctrl-C / SIGTERM on any rank
                ckpt.save(epoch=epoch, interrupted=True)
                raise tmpi_core.checkpoint.Interrupted("stopped")
        ckpt.save(epoch=epoch + 1)
    updates.finalize()

What it stores: every shared variable the updates write (parameters and the
update rule's own state: momentum velocities, Adam's moments and step), any
``extra`` shared variables, the rule's state (step, EASGD center, GoSGD
weight and generator), the epoch and the random states. Rules that keep
ranks equal (BSP on gradients) store the variables once; the others store
each rank's own.
"""

import signal

import numpy as np

from tmpi_core.checkpoint import (Checkpointer as _Store, ResumeError,
                                  check_resumable, from_json_array, get_rng_state, json_array,
                                  restore_rule_state, rule_state_arrays,
                                  set_rng_state)
from tmpi_core.context import get_context

__all__ = ["Checkpointer"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Checkpointer:
    """Save and restore a graph-adapter training run (see the module doc).

    Args:
        updates: what :func:`distributed` returned (a ``DistributedUpdates``),
            or, with ``distributed_grads``, the updates your update rule
            returned (an OrderedDict or a list of pairs) (then pass ``rule`` if it is not BSP on gradients).
        directory: the checkpoint directory (shared by all hosts).
        rule: the :class:`tmpi_core.Rule`; default ``updates.rule`` if
            present, else BSP on gradients (every rank equal).
        extra: more shared variables to save (batch-norm averages updated
            through ``default_update``, say).
        keep: newest checkpoints to keep.
        watch_signals: catch SIGINT/SIGTERM so :meth:`stop_requested` can
            stop every rank together (default True).
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.

    Raises:
        ValueError: for updates that hold no shared variable.
    """

    def __init__(self, updates, directory, *, rule=None, extra=(), keep=2,
                 watch_signals=True, comm=None):
        if hasattr(updates, "keys"):
            variables = list(updates.keys())
        else:
            try:
                variables = [v for v, _ in updates]
            except (TypeError, ValueError):
                raise ValueError(
                    "updates must be what you give function(updates=): an "
                    "OrderedDict or a list of (variable, value) pairs, got "
                    f"{type(updates).__name__}") from None
        variables += [v for v in extra if all(v is not w for w in variables)]
        if not variables or not all(hasattr(v, "get_value")
                                    for v in variables):
            raise ValueError("updates and extra must be shared variables")
        self.variables = variables
        self.rule = rule if rule is not None else getattr(updates, "rule",
                                                          None)
        self._synchronised = getattr(updates, "synchronised", None)
        comm = comm if comm is not None else getattr(
            self.rule, "_comm", None)
        self.ctx = get_context(comm)
        self.store = _Store(directory, keep=keep, comm=self.ctx.comm)
        self._signals = []
        if watch_signals:
            for sig in _SIGNALS:
                try:
                    signal.signal(sig, lambda s, f: self._signals.append(s))
                except ValueError:       # not the main thread
                    pass

    # -- resume -------------------------------------------------------------
    def restore(self):
        """Load the newest checkpoint (collective).

        Returns:
            the epoch to resume at (``meta['epoch']``), 0 without one.

        Raises:
            ValueError: when the checkpoint does not fit these variables or
                this rule.
        """
        ckpt = self.store.load()
        if ckpt is None:
            return 0
        meta = ckpt.meta
        rule = self.rule
        check_resumable(ckpt, rule, self.ctx)
        if meta.get("center_only"):
            center = [ckpt.shared[f"center/{i}"]
                      for i in range(len(self._synchronised))]
            for v, value in zip(self._synchronised, center):
                v.set_value(np.asarray(value, dtype=v.dtype))
        else:
            source = ckpt.shared if "var/0" in ckpt.shared else ckpt.local
            self._assign(source, ckpt.path)
        if rule is not None:
            restore_rule_state(rule, ckpt)
            recorder = getattr(rule, "recorder", None)
            if recorder is not None and recorder.is_open:
                recorder.resume_at(rule.step)
        if "rng" in ckpt.local:
            set_rng_state(from_json_array(ckpt.local["rng"]))
        return int(meta["epoch"])

    def _assign(self, source, path):
        count = sum(1 for k in source if k.startswith("var/"))
        if count != len(self.variables):
            raise ResumeError(
                f"checkpoint {path} holds {count} shared variables; these "
                f"updates have {len(self.variables)}: resume with the model "
                "and update rule that wrote it")
        for i, v in enumerate(self.variables):
            value = source[f"var/{i}"]
            current = v.get_value(borrow=True)
            if np.shape(value) != np.shape(current):
                raise ResumeError(
                    f"checkpoint {path}: variable {i} ({v.name}) has shape "
                    f"{np.shape(value)} there and {np.shape(current)} here")
            v.set_value(np.asarray(value, dtype=np.asarray(current).dtype))

    # -- writing --------------------------------------------------------------
    def save(self, *, epoch, batch=0, interrupted=False):
        """Write a checkpoint of every rank (collective; rank 0 writes).

        Args:
            epoch: the epoch to resume at (``epoch + 1`` after a whole one).
            batch: batches already done in ``epoch`` (recorded; resuming
                starts ``epoch`` from its beginning).
            interrupted: mark a checkpoint written on a stop.

        Returns:
            the path written.

        Raises:
            tmpi_core.checkpoint.CheckpointError: on every rank when it
                cannot be written; the previous checkpoint is kept.
        """
        rule = self.rule
        if rule is not None and self._synchronised is not None:
            fresh = rule.quiesce([v.get_value(borrow=True)
                                  for v in self._synchronised])
            if fresh is not None:
                for v, value in zip(self._synchronised, fresh):
                    v.set_value(np.array(value, dtype=v.dtype))
        values = {f"var/{i}": np.array(v.get_value(borrow=True))
                  for i, v in enumerate(self.variables)}
        shared, local = (rule_state_arrays(rule) if rule is not None
                         else ({}, {}))
        local["rng"] = json_array(get_rng_state())
        if rule is None or rule.ranks_identical:
            shared.update(values)
        else:
            local.update(values)
        if getattr(rule, "recorder", None) is not None:
            rule.recorder.flush()
        meta = {"epoch": int(epoch), "batches_into_epoch": int(batch),
                "interrupted": bool(interrupted),
                "step": rule.step if rule is not None else None,
                "rule": rule.config() if rule is not None else None}
        return self.store.save(shared, local=local, meta=meta)

    def serve(self, *, every_exchanges=100):
        """The asynchronous EASGD server's loop, checkpointing the center.

        Use instead of ``updates.serve()``: on the server it serves until
        the workers finish, writing the center every ``every_exchanges``
        exchanges and at the end, and returns True; elsewhere False.
        """
        if isinstance(every_exchanges, bool) or not isinstance(
                every_exchanges, int) or every_exchanges < 1:
            raise ValueError(f"every_exchanges={every_exchanges!r} must be "
                             "an integer >= 1")
        rule = self.rule
        if getattr(rule, "role", "peer") != "server":
            return False
        base = rule.exchanges

        def on_exchange(exchanges, center):
            if (exchanges - base) % every_exchanges == 0:
                self._save_center(rule, center)

        center = rule.serve(on_exchange=on_exchange)
        for v, value in zip(self._synchronised, center):
            v.set_value(np.array(value, dtype=v.dtype))
        self._save_center(rule, center)
        return True

    def _save_center(self, rule, center):
        shared = {f"center/{i}": np.array(a) for i, a in enumerate(center)}
        rule_shared, local = rule_state_arrays(rule)
        shared.update(rule_shared)
        shared.update(local)
        meta = {"epoch": 0, "batches_into_epoch": 0, "interrupted": False,
                "step": rule.step, "rule": rule.config(), "center_only": True,
                "exchanges": rule.exchanges}
        return self.store.save_local(shared, meta=meta)

    # -- stopping -------------------------------------------------------------
    def stop_requested(self):
        """True on every rank once any rank got SIGINT/SIGTERM (collective:
        call it at the same point of the loop on every rank; one tiny
        allreduce). Asynchronous-rule workers decide alone."""
        if getattr(self.rule, "role", "peer") != "peer":
            return bool(self._signals)
        flag = np.array([1.0 if self._signals else 0.0])
        self.ctx.allreduce_sum(flag)
        return bool(flag[0] > 0)
