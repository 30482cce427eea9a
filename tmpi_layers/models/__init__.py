"""The networks Theano-MPI reported its speedups on, at a width a CPU trains.

* :func:`alexnet`: AlexNet (Krizhevsky et al. 2012) for 32x32 inputs;
* :func:`resnet50`: ResNet-50 (He et al. 2016), bottleneck blocks
  ``[3, 4, 6, 3]``, with a CIFAR-style stem for 32x32 inputs.

Each returns a :class:`tmpi_layers.Sequential` of logits; wrap it in a
:class:`tmpi_layers.Model`.
"""

from tmpi_layers.models.alexnet import alexnet
from tmpi_layers.models.resnet import bottleneck, resnet, resnet50

__all__ = ["alexnet", "bottleneck", "resnet", "resnet50"]
