"""``TrainingState``: one home for what a distributed run saves and agrees on.

Every adapter needs the same things around its training loop: save and
restore the model together with the rule's state, the random states and
the recorder's position; let the asynchronous EASGD server save the
center by itself; and stop every rank at the same step on a signal or when
the data runs out. :class:`TrainingState` does all of it for any
framework. The framework is reached through a small *model I/O* object
the adapter passes in (see :class:`ModelIO`), so this module knows no
framework.
"""

import numpy as np

from tmpi_core.agreement import StopAgreement
from tmpi_core.checkpoint import (Checkpointer, Interrupted, ResumeError,
                                  check_resumable, from_json_array,
                                  get_rng_state, json_array,
                                  restore_rule_state, rule_state_arrays,
                                  set_rng_state)
from tmpi_core.uneven import UnevenBatches

__all__ = ["ModelIO", "TrainingState", "ordered_arrays"]

_NOT_READ = object()            # peek() has not read the directory yet


class ModelIO:
    """How a :class:`TrainingState` reads and writes a framework's model.

    Adapters subclass it; every method works on numpy arrays.
    """

    def read_synchronised(self):
        """The arrays the rule exchanges (its ``start`` parameters)."""
        raise NotImplementedError

    def write_synchronised(self, arrays):
        """Write arrays of the rule's layout back into the model."""
        raise NotImplementedError

    def read_all(self):
        """``{name: array}`` of everything a checkpoint holds (model,
        optimizer state), names the same on every rank and outside the
        state's own (``rule/...``, ``rng``, ``center/...``)."""
        raise NotImplementedError

    def read_local(self):
        """``{name: array}`` of what each rank holds for itself even when
        the rule keeps the ranks equal (batch-norm statistics: each rank's
        own batches move them); names distinct from :meth:`read_all`'s.
        Stored per rank. Default: nothing."""
        return {}

    def load_all(self, arrays, path):
        """Assign what :meth:`read_all` and :meth:`read_local` saved (``arrays`` holds those names
        among others); raise :class:`tmpi_core.ResumeError` naming ``path``
        when it does not fit."""
        raise NotImplementedError


class TrainingState:
    """Save, restore and stop a distributed training run, for any adapter.

    It owns the rule's state in checkpoints (``rule/...``), the random
    states, the asynchronous EASGD server's own center saves, the
    recorder's flush and resume, and the stop agreement (signals and end
    of data, :class:`~tmpi_core.agreement.StopAgreement`).

    Args:
        rule: the run's :class:`tmpi_core.Rule`, started.
        io: the adapter's :class:`ModelIO`.
        directory: checkpoint directory (shared by all hosts), or None for
            a run that only needs the stop agreement.
        keep: newest checkpoints to keep.
        meta: extra JSON-able fields for every checkpoint's record (the
            Keras backend, say).

    Raises:
        ValueError: for a bad ``directory`` or ``keep``.

    Example:
        >>> state = TrainingState(rule, io, directory="run/ckpt")
        >>> epoch = state.restore()            # 0 without a checkpoint
        >>> state.save(epoch=epoch + 1)        # collective
    """

    def __init__(self, rule, io, *, directory=None, keep=2, meta=None):
        self.rule = rule
        self.io = io
        self.meta = dict(meta or {})
        self.store = None
        self.every_epochs = 1
        if directory is not None:
            self.use_directory(directory, keep=keep)
        self.agreement = StopAgreement(comm=rule.comm,
                                       collective=rule.role == "peer")
        self.restored = None        # the Checkpoint restore() loaded
        self._peeked = _NOT_READ

    def use_directory(self, directory, *, keep=2, every_epochs=1):
        """Checkpoint into ``directory`` from now on.

        Args:
            directory: the checkpoint directory (shared by all hosts).
            keep: newest checkpoints to keep.
            every_epochs: the asynchronous EASGD server saves the center
                once per this many epochs' worth of exchanges.
        """
        if isinstance(every_epochs, bool) or not isinstance(
                every_epochs, int) or every_epochs < 1:
            raise ValueError(
                f"every_epochs={every_epochs!r} must be an integer >= 1")
        self.store = Checkpointer(directory, keep=keep, comm=self.rule.comm)
        self.every_epochs = every_epochs

    # -- resume -------------------------------------------------------------
    def peek(self):
        """The newest checkpoint, read but not applied (collective; cached
        until :meth:`restore` applies it). None without one."""
        if self.store is None:
            return None
        if self._peeked is _NOT_READ:
            self._peeked = self.store.load()
        return self._peeked

    def restore(self):
        """Load the newest checkpoint into the model, rule and random
        states (collective; after ``rule.start``).

        Returns:
            the epoch to resume at: the checkpoint's ``epoch``, 0 without.

        Raises:
            ResumeError: on every rank, for a checkpoint of another model,
                rule or (except BSP) number of ranks.
        """
        ckpt = self.peek()
        self._peeked = _NOT_READ
        self.restored = ckpt
        if ckpt is None:
            return 0
        rule = self.rule
        check_resumable(ckpt, rule, rule.context)
        if ckpt.meta.get("center_only"):
            # asynchronous EASGD: every rank resumes from the server's center
            n = len(self.io.read_synchronised())
            self.io.write_synchronised(
                [ckpt.shared[f"center/{i}"] for i in range(n)])
        else:
            self.io.load_all(dict(ckpt.local, **ckpt.shared), ckpt.path)
        restore_rule_state(rule, ckpt)
        if rule.recorder is not None and rule.recorder.is_open:
            rule.recorder.resume_at(rule.step)
        if "rng" in ckpt.local:
            set_rng_state(from_json_array(ckpt.local["rng"]))
        return int(ckpt.meta["epoch"])

    # -- saving -------------------------------------------------------------
    def save(self, *, epoch, batch=0, interrupted=False):
        """Write a checkpoint of every rank (collective; rank 0 writes).

        Asynchronous rules first deliver what is in flight
        (``rule.quiesce``), so the checkpoint is a consistent state.

        Args:
            epoch: the epoch to resume at (``epoch + 1`` after a whole one).
            batch: batches already done in ``epoch`` (recorded only).
            interrupted: mark a checkpoint written on a stop.

        Returns:
            the path written.

        Raises:
            CheckpointError: on every rank when it cannot be written; the
                previous checkpoint is kept.
        """
        store = self._require_store()
        rule = self.rule
        if rule.role == "peer":
            # every rank saves at the same step: finish the round in flight
            self.agreement.complete()
        fresh = rule.quiesce(self.io.read_synchronised())
        if fresh is not None:
            self.io.write_synchronised(fresh)
        model = {k: np.asarray(v) for k, v in self.io.read_all().items()}
        shared, local = rule_state_arrays(rule)
        local["rng"] = json_array(get_rng_state())
        (shared if rule.ranks_identical else local).update(model)
        local.update({k: np.asarray(v)
                      for k, v in self.io.read_local().items()})
        if rule.recorder is not None:
            rule.recorder.flush()
        meta = dict(self.meta, epoch=int(epoch), step=rule.step,
                    rule=rule.config(), interrupted=bool(interrupted),
                    batches_into_epoch=int(batch) if interrupted else 0)
        return store.save(shared, local=local, meta=meta)

    def save_center(self, center, *, epoch=0, interrupted=False):
        """The asynchronous EASGD server's own checkpoint: the center as
        the model (not collective: the server alone holds it)."""
        store = self._require_store()
        rule = self.rule
        shared = {f"center/{i}": np.array(a) for i, a in enumerate(center)}
        rule_shared, local = rule_state_arrays(rule)
        shared.update(rule_shared)
        shared.update(local)
        meta = dict(self.meta, epoch=int(epoch), step=rule.step,
                    rule=rule.config(), interrupted=bool(interrupted),
                    batches_into_epoch=0, center_only=True,
                    exchanges=rule.exchanges)
        return store.save_local(shared, meta=meta)

    def serve(self, *, every_exchanges=None, steps_per_epoch=None,
              start_epoch=0):
        """Run the asynchronous EASGD server, saving the center as it goes.

        On the server: serves until every worker has finished, writes the
        center into the model, saves it a last time and returns True;
        elsewhere returns False at once. The center is saved every
        ``every_exchanges`` exchanges, or else once per
        :attr:`every_epochs` epochs' worth of exchanges (``steps_per_epoch``:
        the workers' steps per epoch); without a directory it is not saved.

        Raises:
            ValueError: for a bad ``every_exchanges``.
        """
        rule = self.rule
        if every_exchanges is not None and (
                isinstance(every_exchanges, bool)
                or not isinstance(every_exchanges, int)
                or every_exchanges < 1):
            raise ValueError(
                f"every_exchanges={every_exchanges!r} must be an integer >= 1")
        if rule.role != "server":
            return False
        self.server_epoch = start_epoch
        on_exchange = None
        if self.store is not None:
            if every_exchanges is None:
                workers = rule.context.size - 1
                per_epoch = max(1, workers * max(1, (steps_per_epoch or 1)
                                                 // rule.tau))
                every_exchanges = per_epoch * self.every_epochs
            else:
                per_epoch = None
            base = rule.exchanges

            def on_exchange(exchanges, center):
                done = exchanges - base
                if per_epoch is not None and done % per_epoch == 0:
                    self.server_epoch = start_epoch + done // per_epoch
                if done % every_exchanges == 0:
                    self.save_center(center, epoch=self.server_epoch)

        center = rule.serve(on_exchange=on_exchange)
        self.io.write_synchronised(center)
        if self.store is not None:
            self.save_center(center, epoch=self.server_epoch,
                             interrupted=bool(self.agreement.signals))
        return True

    # -- stopping -------------------------------------------------------------
    def arm(self):
        """Catch SIGINT/SIGTERM until :meth:`close` (see
        :class:`~tmpi_core.agreement.StopAgreement`)."""
        self.agreement.arm()

    def stop_requested(self):
        """One round of the stop agreement (collective among peers: call
        it at the same point of every step on every rank). True on every
        rank, at the same step, once a decided round said some rank got a
        signal; an asynchronous rule's ranks decide alone."""
        self.agreement.round()
        return self.interrupted

    @property
    def interrupted(self):
        """True once the ranks agreed to stop on a signal."""
        return self.agreement.interrupted

    def interruption(self):
        """The :class:`tmpi_core.Interrupted` to raise after the final
        checkpoint."""
        where = (f"; checkpoint written in {self.store.directory}"
                 if self.store is not None else "")
        signals = self.agreement.signals
        return Interrupted(f"interrupted by signal {signals[0]}{where}"
                           if signals else f"interrupted{where}")

    def batches(self, batches):
        """This rank's batches as an :class:`tmpi_core.UnevenBatches` that
        ends every rank's epoch at the same step, sharing this state's
        stop agreement (so :attr:`interrupted` is decided in its rounds)."""
        return UnevenBatches(batches, rule=self.rule,
                             agreement=self.agreement)

    def close(self):
        """Wait for the agreement's round in flight and put back the
        signal handlers (collective among peers)."""
        self.agreement.close()

    def _require_store(self):
        if self.store is None:
            raise ValueError("this TrainingState has no checkpoint "
                             "directory; pass directory=")
        return self.store



def ordered_arrays(arrays, prefix, targets, path, *, what, where=None,
                   names=None):
    """The checkpoint arrays ``<prefix>/0``, ``<prefix>/1``, ... for
    ``targets`` (objects with ``.shape``), in order, checked.

    Args:
        arrays: the checkpoint's arrays by name.
        prefix: their name prefix (``'model'``, ``'var'``).
        targets: what they will be assigned to, in order.
        path: the checkpoint, for messages.
        what: how messages call the targets (``'model'``: "model
            variables").
        where: how messages call this run's side (default ``what``:
            "this model").
        names: the targets' names, for messages.

    Raises:
        ResumeError: on a count or shape mismatch, naming ``path``.
    """
    where = what if where is None else where
    keys = sorted((k for k in arrays if k.startswith(prefix + "/")),
                  key=lambda k: int(k.split("/", 1)[1]))
    if len(keys) != len(targets):
        raise ResumeError(
            f"checkpoint {path} holds {len(keys)} {what} variables; this "
            f"{where} has {len(targets)}: resume with the model and "
            "optimizer (update rule) that wrote it")
    out = []
    for i, (key, target) in enumerate(zip(keys, targets)):
        value = arrays[key]
        if tuple(np.shape(value)) != tuple(target.shape):
            name = f" ({names[i]})" if names is not None else ""
            raise ResumeError(
                f"checkpoint {path}: {what} variable {i}{name} has shape "
                f"{tuple(np.shape(value))} in the checkpoint and "
                f"{tuple(target.shape)} in this {where}")
        out.append(value)
    return out
