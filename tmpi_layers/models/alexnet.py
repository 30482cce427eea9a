"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) for 32x32 inputs."""

from tmpi_layers.layers import (BatchNorm, Conv2D, Dense, Dropout, MaxPool2D,
                                ReLU, Sequential)

__all__ = ["alexnet", "CHANNELS", "DENSE"]

#: The five convolutions' channels and the hidden dense units at width 1.
CHANNELS = (96, 256, 384, 384, 256)
DENSE = 4096


def alexnet(classes, *, width=0.125, dropout=0.5, batch_norm=False,
            name="alexnet"):
    """AlexNet's five convolutions and three dense layers, for 32x32 images.

    The ImageNet net's 11x11/4 first convolution and 224 px input become a
    5x5/1 convolution on 32 px (as in CIFAR versions); the 3x3/2
    overlapping max-pooling follows convolutions 1, 2 and 5 (32 -> 15 ->
    7 -> 3); local response normalisation is left out (later work found it
    adds little), or replaced by batch norm with ``batch_norm=True``.

    Args:
        classes: number of logits.
        width: multiplier on the channels ``96, 256, 384, 384, 256`` and the
            4096 dense units (at least one each). 0.125 gives
            ``12, 32, 48, 48, 32`` channels and 512 units.
        dropout: before each hidden dense layer (AlexNet: 0.5; 0 disables).
        batch_norm: batch norm after each convolution (before ReLU).
        name: the network's name, the prefix of its parameter names.

    Returns:
        Sequential: ``(C, 32, 32)`` images to ``(classes,)`` logits (any
        side from 32 up works; the dense layers take what the convolutions
        leave).

    Raises:
        ValueError: for ``width <= 0`` or ``dropout`` outside [0, 1).
    """
    if not width > 0:
        raise ValueError(f"width={width!r} must be > 0")
    c1, c2, c3, c4, c5 = (max(1, round(c * width)) for c in CHANNELS)
    units = max(1, round(DENSE * width))

    def conv(filters, size, cname):
        if not batch_norm:
            return [Conv2D(filters, size, pad="same", activation="relu",
                           name=cname)]
        return [Conv2D(filters, size, pad="same", b=None, name=cname),
                BatchNorm(name=cname + "_bn"), ReLU(name=cname + "_relu")]

    layers = (conv(c1, 5, "conv1") + [MaxPool2D(3, 2, name="pool1")]
              + conv(c2, 5, "conv2") + [MaxPool2D(3, 2, name="pool2")]
              + conv(c3, 3, "conv3") + conv(c4, 3, "conv4")
              + conv(c5, 3, "conv5") + [MaxPool2D(3, 2, name="pool5")])
    for i in (6, 7):
        if dropout:
            layers.append(Dropout(dropout, name=f"drop{i}"))
        layers.append(Dense(units, activation="relu", name=f"fc{i}"))
    layers.append(Dense(classes, name="fc8"))
    return Sequential(layers, name=name)
