"""Checkpoint and resume for :class:`TMPISync` (its ``checkpoint=`` option).

What a checkpoint holds: every model variable, the optimizer's variables,
the rule's state (step counter = warm-up position, EASGD center, GoSGD
weight and generator), the epoch to resume at, and the random-generator
states. Rules that keep ranks equal (BSP on gradients) store the model once;
the others store every rank's own model and optimizer state.

When checkpoints are written:
* at the end of every ``every``-th epoch (collective, rank 0 writes);
* when the job is interrupted (``SIGINT``/``SIGTERM``, Ctrl-C on the
  launcher, which forwards it to every rank): the ranks agree within two
  batch ends, stop at the same batch, write one final checkpoint and raise
  :class:`tmpi_core.Interrupted` (a ``KeyboardInterrupt``);
* asynchronous EASGD: the server writes the center by itself, once per
  epoch's worth of exchanges, and at the end; workers resume from the center.
"""

import os
import signal
import warnings

import keras
import numpy as np

from tmpi_adapters.keras import _bridge
from tmpi_core.checkpoint import (Checkpointer, Interrupted, ResumeError,
                                  check_resumable, from_json_array, get_rng_state, json_array,
                                  restore_rule_state, rule_state_arrays,
                                  set_rng_state)

__all__ = []

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Checkpointing:
    """The checkpoint side of a :class:`TMPISync` (not public; see its docs).

    Args:
        sync: the owning callback.
        directory: the checkpoint directory.
        every: write at the end of every ``every``-th epoch.
        keep: newest checkpoints to keep.
    """

    def __init__(self, sync, directory, *, every=1, keep=2):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(
                f"checkpoint_every={every!r} must be an integer >= 1 (epochs)")
        # named as TMPISync's arguments, before the core checks them again
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise ValueError(f"checkpoint={directory!r} must be a directory "
                             "path (str or os.PathLike) or None")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(
                f"checkpoint_keep={keep!r} must be an integer >= 1")
        self.sync = sync
        self.store = Checkpointer(directory, keep=keep, comm=sync.ctx.comm)
        self.every = every
        self._loaded = None
        self._looked = False
        self._epoch = 0
        self._batch = 0
        self._interrupted = []
        self._stopping = False
        self._previous_handlers = {}
        self._server_epoch = 0
        self._resumed_from = None
        self._flags = np.zeros(2)
        self._request = None

    # -- resume -------------------------------------------------------------
    def resume_epoch(self):
        """Epoch to pass to ``fit(initial_epoch=...)`` (collective)."""
        self._look()
        return int(self._loaded.meta["epoch"]) if self._loaded else 0

    def _look(self):
        if not self._looked:
            self._loaded = self.store.load()
            self._looked = True

    def restore(self, model, rule):
        """Load the newest checkpoint into the model, optimizer and rule.

        Called by the callback at train begin, after ``rule.start``.
        Returns True when a checkpoint was restored.
        """
        self._look()
        ckpt, self._loaded = self._loaded, None
        if ckpt is None:
            return False
        meta = ckpt.meta
        check_resumable(ckpt, rule, self.sync.ctx)
        self._epoch = int(meta["epoch"])
        self._resumed_from = ckpt
        if meta.get("center_only"):
            # Asynchronous EASGD: every rank resumes from the center.
            center = [ckpt.shared[f"center/{i}"]
                      for i in range(len(self.sync._weights))]
            _bridge.write(self.sync._weights, center)
            restore_rule_state(rule, ckpt)
            _resume_recorder(rule)
            return True
        source = ckpt.shared if "model/0" in ckpt.shared else ckpt.local
        _assign(model.variables, source, "model", ckpt.path)
        optimizer = model.optimizer
        if optimizer is not None:
            if not optimizer.built and any(
                    k.startswith("optimizer/") for k in source):
                optimizer.build(model.trainable_variables)
            _assign(optimizer.variables, source, "optimizer", ckpt.path)
        restore_rule_state(rule, ckpt)
        _resume_recorder(rule)
        if "rng" in ckpt.local:
            set_rng_state(from_json_array(ckpt.local["rng"]))
        return True

    def check_initial_epoch(self, epoch):
        """Warn once when ``fit`` starts at another epoch than the restored
        checkpoint's (``initial_epoch`` was not passed)."""
        ckpt = self._resumed_from
        self._resumed_from = None
        if ckpt is not None and epoch != int(ckpt.meta["epoch"]) \
                and self.sync.ctx.rank == 0:
            warnings.warn(
                f"restored {ckpt.path} (next epoch {ckpt.meta['epoch']}) but "
                f"fit starts at epoch {epoch}; pass "
                "initial_epoch=sync.resume_epoch() to fit", stacklevel=2)

    # -- signals --------------------------------------------------------------
    def arm(self):
        """Catch SIGINT/SIGTERM so the ranks can stop together."""
        self._interrupted.clear()
        self._stopping = False
        for sig in _SIGNALS:
            try:
                self._previous_handlers[sig] = signal.signal(
                    sig, self._on_signal)
            except ValueError:          # not the main thread
                pass

    def disarm(self):
        """Put back the signal handlers :meth:`arm` replaced."""
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum, frame):
        self._interrupted.append(signum)

    def after_batch(self, model, batch, role):
        """Agree on stopping (peers: one tiny non-blocking allreduce per
        batch, decided one batch later)."""
        self._batch = batch + 1
        stop = self._agree() if role == "peer" else bool(self._interrupted)
        if stop and not self._stopping:
            self._stopping = True
            model.stop_training = True

    def _agree(self):
        # Decide on the flags every rank posted one batch ago, then post
        # this batch's: the ranks stop at the same batch, and a rule whose
        # ranks do not wait for each other (GoSGD) gets one batch of slack
        # instead of a barrier per batch.
        from mpi4py import MPI

        stop = False
        if self._request is not None:
            self._request.Wait()
            stop = bool(self._flags[1] > 0)
        self._flags[0] = 1.0 if self._interrupted else 0.0
        self._request = self.sync.ctx.comm.Iallreduce(
            self._flags[0:1], self._flags[1:2], op=MPI.SUM)
        return stop

    def _complete(self):
        if self._request is not None:
            self._request.Wait()
            self._request = None

    @property
    def stopping(self):
        """True once the ranks agreed to stop on a signal."""
        return self._stopping

    # -- writing --------------------------------------------------------------
    def before_epoch(self, epoch):
        """Remember the epoch in progress (an interruption resumes it)."""
        self._epoch = epoch
        self._batch = 0

    def after_training(self, model, rule):
        """After ``rule.finalize``: the server's last checkpoint; on an
        interruption, the final checkpoint and ``KeyboardInterrupt``."""
        self._complete()
        self.disarm()
        role = rule_role(rule)
        if role == "server":
            self.save_server(rule, _bridge.read(self.sync._weights),
                             epoch=self._server_epoch,
                             interrupted=bool(self._interrupted))
        elif self._stopping and role == "peer":
            self.save(model, rule, epoch=self._epoch, interrupted=True)
        if self._stopping or (role == "server" and self._interrupted):
            raise Interrupted(
                f"interrupted by signal {self._interrupted[0]}; "
                f"checkpoint written in {self.store.directory}"
                if self._interrupted else "interrupted")
    def after_epoch(self, model, rule, epoch):
        """End of a whole epoch: write every ``every``-th (collective)."""
        if self._stopping:
            return          # the epoch was cut short: the final one says so
        self._epoch = epoch + 1
        if rule_role(rule) == "peer" and self._epoch % self.every == 0:
            self.save(model, rule, epoch=self._epoch)

    def save(self, model, rule, *, epoch, interrupted=False):
        """Write a checkpoint of all ranks (collective)."""
        params = _bridge.read(self.sync._weights)
        fresh = rule.quiesce(params)
        if fresh is not None:
            _bridge.write(self.sync._weights, fresh)
        model_arrays = _named("model", _bridge.read(model.variables))
        optimizer = model.optimizer
        if optimizer is not None and optimizer.built:
            model_arrays.update(
                _named("optimizer", _bridge.read(optimizer.variables)))
        rule_shared, local = rule_state_arrays(rule)
        local["rng"] = json_array(get_rng_state())
        if rule.ranks_identical:
            shared = dict(model_arrays, **rule_shared)
        else:
            shared = rule_shared
            local.update(model_arrays)
        if getattr(rule, "recorder", None) is not None:
            rule.recorder.flush()
        meta = {"epoch": epoch, "step": rule.step, "rule": rule.config(),
                "interrupted": interrupted,
                "batches_into_epoch": self._batch if interrupted else 0,
                "backend": _bridge.backend_name()}
        return self.store.save(shared, local=local, meta=meta)

    # -- asynchronous EASGD server -------------------------------------------
    def server_hook(self, model, rule, steps_per_epoch):
        """A function for ``EASGD.serve(on_exchange=...)`` that writes the
        center about once per epoch's worth of worker exchanges."""
        workers = self.sync.ctx.size - 1
        per_epoch = max(1, workers * max(1, (steps_per_epoch or 1)
                                         // rule.tau))
        start, base = self._epoch, rule.exchanges
        self._server_epoch = start

        def on_exchange(exchanges, center):
            done = exchanges - base
            if done % per_epoch == 0:
                self._server_epoch = start + done // per_epoch
                if (self._server_epoch - start) % self.every == 0:
                    self.save_server(rule, center, epoch=self._server_epoch)
        return on_exchange

    def save_server(self, rule, center, *, epoch, interrupted=False):
        """The server's own checkpoint: the center as the model."""
        shared = _named("center", [np.asarray(a) for a in center])
        rule_shared, local = rule_state_arrays(rule)
        shared.update(rule_shared)
        shared.update(local)
        meta = {"epoch": epoch, "step": rule.step, "rule": rule.config(),
                "interrupted": interrupted, "batches_into_epoch": 0,
                "backend": _bridge.backend_name(), "center_only": True}
        return self.store.save_local(shared, meta=meta)


def _resume_recorder(rule):
    recorder = getattr(rule, "recorder", None)
    if recorder is not None and recorder.is_open:
        recorder.resume_at(rule.step)


def rule_role(rule):
    """'peer', 'server' or 'worker' (see TMPISync._role)."""
    return getattr(rule, "role", "peer")


def _named(prefix, arrays):
    return {f"{prefix}/{i}": np.asarray(a) for i, a in enumerate(arrays)}


def _assign(variables, source, prefix, path):
    keys = sorted((k for k in source if k.startswith(prefix + "/")),
                  key=lambda k: int(k.split("/", 1)[1]))
    variables = list(variables)
    if len(keys) != len(variables):
        raise ResumeError(
            f"checkpoint {path} holds {len(keys)} {prefix} variables; this "
            f"{prefix} has {len(variables)}: resume with the model and "
            "optimizer that wrote it")
    for i, (key, v) in enumerate(zip(keys, variables)):
        value = source[key]
        if tuple(value.shape) != tuple(v.shape):
            raise ResumeError(
                f"checkpoint {path}: {prefix} variable {i} ({v.path}) has "
                f"shape {tuple(value.shape)} in the checkpoint and "
                f"{tuple(v.shape)} in this {prefix}")
        v.assign(np.asarray(value, dtype=keras.backend.standardize_dtype(
            v.dtype)))
