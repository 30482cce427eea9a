"""``TMPIBackupAndRestore``: checkpoint and resume a data-parallel ``fit``.

The Keras counterpart of ``keras.callbacks.BackupAndRestore`` for runs
synchronised by :class:`~tmpi_adapters.keras.TMPISync`. What a checkpoint
holds: every model variable, the optimizer's variables, the rule's state
(step counter = warm-up position, EASGD center, GoSGD weight and
generator), the epoch to resume at, and the random states. Rules that keep
ranks equal (BSP on gradients) store the model once; the others store every
rank's own model and optimizer state.

When checkpoints are written:

* at the end of every ``every``-th epoch (collective, rank 0 writes);
* when the job is interrupted (``SIGINT``/``SIGTERM``, Ctrl-C on the
  launcher, which forwards it to every rank): the ranks agree within two
  batch ends, stop at the same batch, write one final checkpoint and raise
  :class:`tmpi_core.Interrupted` (a ``KeyboardInterrupt``);
* asynchronous EASGD: the server writes the center by itself, once per
  ``every`` epochs' worth of exchanges, and at the end; workers resume from
  the center.

The work is done by the run's :class:`tmpi_core.TrainingState`
(``sync.state``); this callback chooses the directory and when to write.
"""

import os

import keras
import numpy as np

from tmpi_adapters.keras import _bridge
from tmpi_core.state import ModelIO, ordered_arrays

__all__ = ["TMPIBackupAndRestore"]


class TMPIBackupAndRestore(keras.callbacks.Callback):
    """Checkpoint a :class:`TMPISync` run and resume it by itself.

    Put it after the ``TMPISync`` in the callback list. At train begin it
    restores the newest checkpoint in ``directory`` (model, optimizer,
    rule, random states) and makes ``fit`` start at that checkpoint's
    epoch: no ``initial_epoch`` to pass.

    Args:
        directory: the checkpoint directory (on several hosts, a file
            system they all see).
        sync: the run's :class:`TMPISync`.
        every: write at the end of every ``every``-th epoch.
        keep: newest checkpoints to keep.

    Raises:
        ValueError: for a bad directory, ``sync``, ``every`` or ``keep``.

    Example:
        >>> sync = tmpi_keras.TMPISync("bsp")
        >>> model.fit(x, y, epochs=10, callbacks=[
        ...     sync, tmpi_keras.TMPIBackupAndRestore("run/ckpt", sync=sync)])
    """

    def __init__(self, directory, *, sync, every=1, keep=2):
        super().__init__()
        from tmpi_adapters.keras.callback import TMPISync

        if not isinstance(sync, TMPISync):
            raise ValueError(f"sync={sync!r} must be the run's TMPISync")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r} must be an integer >= 1 "
                             "(epochs)")
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise ValueError(f"directory={directory!r} must be a directory "
                             "path (str or os.PathLike)")
        self.sync = sync
        self.every = every
        sync.state.use_directory(directory, keep=keep, every_epochs=every)

    def on_train_begin(self, logs=None):
        state = self.sync.state
        epoch = state.restore()
        if state.restored is not None:
            self.model._initial_epoch = epoch     # as BackupAndRestore does
        state.arm()

    def on_epoch_end(self, epoch, logs=None):
        state = self.sync.state
        if state.interrupted or self.sync.rule.role != "peer":
            return      # cut short: the final checkpoint says so
        if (epoch + 1) % self.every == 0:
            state.save(epoch=epoch + 1)

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None


class KerasIO(ModelIO):
    """A Keras model as a :class:`tmpi_core.state.ModelIO`.

    Args:
        model: the Keras model.
        weights: the variables the rule synchronises, in its order.
    """

    def __init__(self, model, weights):
        self.model = model
        self.weights = weights

    def read_synchronised(self):
        """The synchronised weights as numpy arrays."""
        return _bridge.read(self.weights)

    def write_synchronised(self, arrays):
        """Assign arrays to the synchronised weights."""
        _bridge.write(self.weights, arrays)

    def read_local(self):
        """The model's non-trainable variables (batch-norm statistics):
        every rank's own, even when the rule keeps the weights equal."""
        variables = list(self.model.variables)
        return {f"model/{i}": np.asarray(v.numpy())
                for i, v in enumerate(variables) if not v.trainable}

    def read_all(self):
        """The model's trainable variables (``model/i``) and, once built,
        every optimizer variable (``optimizer/i``)."""
        variables = list(self.model.variables)
        out = {f"model/{i}": np.asarray(v.numpy())
               for i, v in enumerate(variables) if v.trainable}
        optimizer = self.model.optimizer
        if optimizer is not None and optimizer.built:
            out.update(_named("optimizer", _bridge.read(optimizer.variables)))
        return out

    def load_all(self, arrays, path):
        """Assign a checkpoint's model and optimizer variables."""
        model = self.model
        variables = list(model.variables)
        _assign(variables, ordered_arrays(
            arrays, "model", variables, path, what="model",
            names=[v.path for v in variables]))
        optimizer = model.optimizer
        if optimizer is not None and any(k.startswith("optimizer/")
                                         for k in arrays):
            if not optimizer.built:
                optimizer.build(model.trainable_variables)
            variables = list(optimizer.variables)
            _assign(variables, ordered_arrays(
                arrays, "optimizer", variables, path, what="optimizer",
                names=[v.path for v in variables]))


def _named(prefix, arrays):
    return {f"{prefix}/{i}": np.asarray(a) for i, a in enumerate(arrays)}


def _assign(variables, values):
    for v, value in zip(variables, values):
        v.assign(np.asarray(value, dtype=keras.backend.standardize_dtype(
            v.dtype)))
