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

The work is done by a :class:`tmpi_core.TrainingState`; this module only
says how shared variables are read and written.

What it stores: every shared variable the updates write (parameters and the
update rule's own state: momentum velocities, Adam's moments and step), any
``extra`` shared variables, the rule's state (step, EASGD center, GoSGD
weight and generator), the epoch and the random states. Rules that keep
ranks equal (BSP on gradients) store the variables once; the others store
each rank's own.
"""

import numpy as np

from tmpi_core.rules import make_rule
from tmpi_core.state import ModelIO, TrainingState, ordered_arrays

__all__ = ["Checkpointer"]


class SharedVariablesIO(ModelIO):
    """Shared variables (Theano or PyTensor) as a
    :class:`tmpi_core.state.ModelIO`: ``var/i`` in a checkpoint.

    Args:
        variables: every shared variable a checkpoint holds.
        synchronised: those the rule exchanges, in its order.
    """

    def __init__(self, variables, synchronised):
        self.variables = variables
        self.synchronised = synchronised

    def read_synchronised(self):
        """The synchronised variables' values."""
        return [v.get_value(borrow=True) for v in self.synchronised]

    def write_synchronised(self, arrays):
        """Set the synchronised variables (cast to each one's dtype)."""
        for v, value in zip(self.synchronised, arrays):
            v.set_value(np.array(value, dtype=v.dtype))

    def read_all(self):
        """Every variable's value, ``var/i``."""
        return {f"var/{i}": np.array(v.get_value(borrow=True))
                for i, v in enumerate(self.variables)}

    def load_all(self, arrays, path):
        """Set every variable from a checkpoint's ``var/i``."""
        targets = [_Shape(v) for v in self.variables]
        values = ordered_arrays(arrays, "var", targets, path,
                                what="shared", where="run", names=[v.name for v in
                                                      self.variables])
        for v, value in zip(self.variables, values):
            v.set_value(np.asarray(value, dtype=v.dtype))


class _Shape:
    __slots__ = ("shape",)

    def __init__(self, variable):
        self.shape = np.shape(variable.get_value(borrow=True))


class Checkpointer:
    """Save and restore a graph-adapter training run (see the module doc).

    Args:
        updates: what :func:`distributed` returned (a ``DistributedUpdates``),
            or, with ``distributed_grads``, the updates your update rule
            returned (an OrderedDict or a list of pairs); then pass ``rule``
            if it is not BSP on gradients.
        directory: the checkpoint directory (shared by all hosts).
        rule: the :class:`tmpi_core.Rule`; default ``updates.rule`` if
            present, else BSP on gradients (every rank equal).
        extra: more shared variables to save (batch-norm averages updated
            through ``default_update``, say).
        keep: newest checkpoints to keep.
        watch_signals: catch SIGINT/SIGTERM so :meth:`stop_requested` can
            stop every rank together (default True); the previous handlers
            come back at :meth:`close`.
        comm: an ``mpi4py.MPI.Comm`` for the default rule; default
            ``COMM_WORLD``.

    Attributes:
        state: the :class:`tmpi_core.TrainingState` doing the work.

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
        synchronised = None
        if isinstance(updates, _distributed_updates()):
            rule = rule if rule is not None else updates.rule
            synchronised = updates.synchronised
        if rule is None:
            rule = make_rule("bsp", mode="grads", comm=comm)
        self.rule = rule
        self.state = TrainingState(
            rule, SharedVariablesIO(variables, synchronised or []),
            directory=directory, keep=keep)
        if watch_signals:
            self.state.arm()

    def restore(self):
        """Load the newest checkpoint (collective).

        Returns:
            the epoch to resume at (``meta['epoch']``), 0 without one.

        Raises:
            ResumeError: when the checkpoint does not fit these variables
                or this rule.
        """
        return self.state.restore()

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
        return self.state.save(epoch=epoch, batch=batch,
                               interrupted=interrupted)

    def serve(self, *, every_exchanges=100):
        """The asynchronous EASGD server's loop, checkpointing the center.

        Use instead of ``updates.serve()``: on the server it serves until
        the workers finish, writing the center every ``every_exchanges``
        exchanges and at the end, and returns True; elsewhere False.

        Raises:
            ValueError: for a bad ``every_exchanges``.
        """
        return self.state.serve(every_exchanges=every_exchanges)

    def stop_requested(self):
        """True on every rank once any rank got SIGINT/SIGTERM (collective:
        call it at the same point of the loop on every rank; one tiny
        non-blocking allreduce, decided one call later, so every rank says
        True at the same call). Asynchronous-rule workers decide alone."""
        return self.state.stop_requested()

    def batches(self, batches):
        """This rank's batches, ending every rank's epoch at the same step
        when ranks hold different numbers of them (see
        :class:`tmpi_core.UnevenBatches`); stop requests are decided in
        the same rounds (check :attr:`interrupted` in the loop)."""
        return self.state.batches(batches)

    @property
    def interrupted(self):
        """True once the ranks agreed to stop on a signal."""
        return self.state.interrupted

    def close(self):
        """Finish the stop agreement and put back the signal handlers."""
        self.state.close()


def _distributed_updates():
    from tmpi_adapters._graph import DistributedUpdates

    return DistributedUpdates
