"""The Keras features users combine with TMPISync, on the backend of
``KERAS_BACKEND``; one launch runs every case.

Run by tests/test_keras_features.py as ``mpiexec -n 2 python
keras_features.py --out DIR``; each rank writes ``DIR/rank{r}.json``:

* ``mixed``: ``mixed_float16`` (Keras wraps the optimizer in a
  ``LossScaleOptimizer``), BSP on gradients; one sample of one rank is
  ``inf``, so that step's gradients are not finite on that rank only.
* ``inputs``: the same BSP training fed as a ``PyDataset``, a generator
  with ``steps_per_epoch`` and, where TensorFlow is installed, a
  ``tf.data.Dataset``.
* ``bn``: a model with batch norm, the moving mean seen at the last batch
  of every epoch (this rank's own) and when validation begins (after
  TMPISync); ``ModelCheckpoint`` on rank 0 and Keras' ``BackupAndRestore``
  (a directory per rank) next to TMPISync; a second fit that resumes from
  the backup, and a run without interruption to compare it with.
"""

import argparse
import importlib.util
import json
import os

import keras
import numpy as np

import tmpi_adapters.keras as tmpi_keras
from tmpi_core import get_context
from kfeatures import B, EPOCHS, N, POISON, mixed_model
from kmodels import compile_model, make_data, make_model, make_optimizer
from mpirun import note_errors_per_rank

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
args = p.parse_args()
rank, size = tmpi_keras.rank(), tmpi_keras.size()
note_errors_per_rank(args.out, rank)


def weights(model):
    return [np.asarray(w).tolist() for w in model.get_weights()]


def mixed():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = make_data(N)
        x[POISON, 0] = np.inf
        x, y = tmpi_keras.shard((x, y))
        model = compile_model(mixed_model(100 + rank),
                              make_optimizer("momentum"))
        model.fit(x, y, batch_size=B, epochs=EPOCHS, shuffle=False,
                  callbacks=[tmpi_keras.TMPISync("bsp")], verbose=0)
        opt = model.optimizer
        return {"optimizer": type(opt).__name__,
                "weights": weights(model),
                "scale": float(np.asarray(opt.dynamic_scale.numpy())),
                "updates": int(np.asarray(
                    opt.inner_optimizer.iterations.numpy()))}
    finally:
        keras.mixed_precision.set_global_policy("float32")


class Batches(keras.utils.PyDataset):
    """This rank's batches, in order."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x) // B

    def __getitem__(self, i):
        return self.x[i * B:(i + 1) * B], self.y[i * B:(i + 1) * B]


def inputs():
    x, y = tmpi_keras.shard(make_data(N))
    steps = len(x) // B

    def generator():
        while True:
            for i in range(steps):
                yield x[i * B:(i + 1) * B], y[i * B:(i + 1) * B]

    feeds = {"pydataset": (Batches(x, y), None),
             "generator": (generator(), steps)}
    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow as tf

        feeds["tf_data"] = (tf.data.Dataset.from_tensor_slices(
            (x, y)).batch(B), None)
    result = {}
    for name, (data, steps_per_epoch) in feeds.items():
        model = compile_model(make_model(100 + rank),
                              make_optimizer("momentum"))
        model.fit(data, epochs=EPOCHS, steps_per_epoch=steps_per_epoch,
                  shuffle=False,
                  callbacks=[tmpi_keras.TMPISync("bsp")], verbose=0)
        result[name] = weights(model)
    return result


class Probe(keras.callbacks.Callback):
    """The first batch-norm layer's moving mean: this rank's own at the end
    of every epoch's training, and when validation begins."""

    def __init__(self):
        super().__init__()
        self.own, self.validated = [], []
        self.steps = None

    def _mean(self):
        bn = next(layer for layer in self.model.layers
                  if isinstance(layer, keras.layers.BatchNormalization))
        return np.asarray(bn.moving_mean.numpy()).tolist()

    def on_train_begin(self, logs=None):
        self.steps = self.params["steps"]

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.steps - 1:
            self.own.append(self._mean())

    def on_test_begin(self, logs=None):
        self.validated.append(self._mean())


def bn():
    x, y = tmpi_keras.shard(make_data(N))
    xv, yv = tmpi_keras.shard(make_data(N // 2, seed=1))
    work = os.path.join(args.out, "bn")
    os.makedirs(work, exist_ok=True)    # before Keras' callbacks, on every rank
    backup = os.path.join(work, f"backup.rank{rank}")
    best = os.path.join(work, "epoch.weights.h5")

    def fit(seed, epochs, extra):
        model = compile_model(make_model(seed, batchnorm=True),
                              make_optimizer("sgd"))
        probe = Probe()
        h = model.fit(x, y, batch_size=B, epochs=epochs, shuffle=False,
                      validation_data=(xv, yv), verbose=0,
                      callbacks=[tmpi_keras.TMPISync("bsp"), probe, *extra])
        return model, probe, h

    model, probe, _ = fit(100 + rank, EPOCHS, [
        *tmpi_keras.rank_zero_only(keras.callbacks.ModelCheckpoint(
            best, save_weights_only=True)),
        keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
    result = {"own": probe.own, "validated": probe.validated,
              "final": weights(model)}
    get_context().barrier()         # rank 0 has written the file
    saved = make_model(0, batchnorm=True)
    saved.load_weights(best)
    result["checkpointed"] = weights(saved)
    # a new fit, from other initial weights, resumes from the backup
    resumed, _, h = fit(200 + rank, EPOCHS + 2, [
        keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
    straight, _, _ = fit(100 + rank, EPOCHS + 2, [])
    result.update(resumed=weights(resumed), resumed_epochs=h.epoch,
                  straight=weights(straight))
    return result


result = {"mixed": mixed(), "inputs": inputs(), "bn": bn()}
with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
