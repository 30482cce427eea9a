"""tmpi_layers: a light-weight layer library for Theano and PyTensor.

Just enough to build convolutional classifiers without another framework,
and a small model contract that tmpi's graph adapters train directly:

* layers (:mod:`tmpi_layers.layers`): :class:`Dense`, :class:`Conv2D`,
  :class:`MaxPool2D`, :class:`AvgPool2D`, :class:`GlobalAvgPool`,
  :class:`BatchNorm`, :class:`Dropout`, :class:`ReLU`, and the containers
  :class:`Sequential` and :class:`Residual`;
* softmax / cross-entropy (:mod:`tmpi_layers.losses`), weight initialisers
  (:mod:`tmpi_layers.init`), SGD and momentum (:mod:`tmpi_layers.optim`);
* :class:`Model`: ``params``, ``state``, ``train_step(rule)`` (the exchange
  put in by :mod:`tmpi_adapters.pytensor` or :mod:`tmpi_adapters.lasagne`)
  and ``val_step()``;
* :mod:`tmpi_layers.models`: AlexNet and ResNet-50 at a width a CPU trains.

One code base serves both libraries; choose one with ``lib='pytensor'`` or
``lib='theano'`` (:func:`backend`). Optional: Lasagne and Keras users do not
need it.

Example:
    >>> from tmpi_layers import Model, models
    >>> model = Model(models.resnet50(classes=10, width=8), (1, 32, 32),
    ...               lib="pytensor")
    >>> step = model.train_step("bsp", lr=0.05)
"""

from tmpi_layers import init, losses, optim
from tmpi_layers.backend import COMPILES, LIBS, Backend, backend
from tmpi_layers.layers import (AvgPool2D, BatchNorm, Builder, Conv2D, Dense,
                                Dropout, GlobalAvgPool, Layer, MaxPool2D,
                                Phase, ReLU, Residual, Sequential)
from tmpi_layers.model import Model, TrainStep, ValStep

__all__ = [
    "COMPILES", "LIBS", "Backend", "backend",
    "Layer", "Builder", "Phase",
    "Dense", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool",
    "BatchNorm", "Dropout", "ReLU", "Sequential", "Residual",
    "Model", "TrainStep", "ValStep",
    "init", "losses", "optim",
]
