"""Small Keras models, optimizers and data shared by the MPI scripts and the
single-process references in the tests."""

import numpy as np

OPTIMIZERS = ("sgd", "momentum", "adam")


def make_data(n, *, features=6, classes=3, seed=0):
    """Deterministic classification data: ``x`` float32, ``y`` int64."""
    rs = np.random.RandomState(seed)
    x = rs.normal(size=(n, features)).astype(np.float32)
    w = rs.normal(size=(features, classes))
    y = np.argmax(x @ w + 0.5 * rs.normal(size=(n, classes)), axis=1)
    return x, y.astype(np.int64)


def make_model(seed, *, batchnorm=False, features=6, classes=3):
    """A two-layer MLP whose initial weights depend only on ``seed``."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((features,)), keras.layers.Dense(16, activation="tanh")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Dense(classes))
    return keras.Sequential(layers)


def make_optimizer(name, lr=None, accumulate=None):
    """``'sgd'``, ``'momentum'`` (SGD, 0.9) or ``'adam'``; ``accumulate``:
    Keras' ``gradient_accumulation_steps``."""
    import keras

    extra = {"gradient_accumulation_steps": accumulate} if accumulate else {}
    if name == "sgd":
        return keras.optimizers.SGD(lr or 0.1, **extra)
    if name == "momentum":
        return keras.optimizers.SGD(lr or 0.05, momentum=0.9, **extra)
    if name == "adam":
        return keras.optimizers.Adam(lr or 0.01, **extra)
    raise ValueError(f"unknown optimizer {name!r}")


def compile_model(model, optimizer, **kwargs):
    import keras

    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], **kwargs)
    return model
