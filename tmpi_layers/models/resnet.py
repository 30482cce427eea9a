"""ResNet-50 (He, Zhang, Ren & Sun 2016) for 32x32 inputs."""

from tmpi_layers.layers import (BatchNorm, Conv2D, Dense, GlobalAvgPool,
                                ReLU, Residual, Sequential)

__all__ = ["bottleneck", "resnet", "resnet50", "EXPANSION"]

#: A bottleneck block's output channels per inner channel.
EXPANSION = 4


def _conv_bn(filters, size, stride, name, *, relu):
    layers = [Conv2D(filters, size, stride=stride, pad=size // 2, b=None,
                     name=name), BatchNorm(name=name + "_bn")]
    if relu:
        layers.append(ReLU(name=name + "_relu"))
    return layers


def bottleneck(in_channels, channels, stride=1, *, name=None):
    """A bottleneck block: 1x1 (``channels``), 3x3 (``channels``, the
    stride), 1x1 (``4 * channels``) convolutions with batch norm, ReLU after
    the sum with the shortcut (a 1x1 projection with batch norm when the
    shape changes, else the identity).

    Args:
        in_channels: the input's channels.
        channels: the inner width.
        stride: the 3x3 convolution's stride (2 halves the side).
        name: the block's name.

    Returns:
        Residual.
    """
    out = channels * EXPANSION
    branch = Sequential(
        _conv_bn(channels, 1, 1, "conv1", relu=True)
        + _conv_bn(channels, 3, stride, "conv2", relu=True)
        + _conv_bn(out, 1, 1, "conv3", relu=False), name="branch")
    shortcut = None
    if stride != 1 or in_channels != out:
        shortcut = Sequential(_conv_bn(out, 1, stride, "proj", relu=False),
                              name="shortcut")
    return Residual(branch, shortcut, activation="relu", name=name)


def resnet(classes, blocks, *, width=16, name="resnet"):
    """A bottleneck ResNet for 32x32 inputs.

    A 3x3 convolution (``width`` channels, batch norm, ReLU) replaces the
    ImageNet stem's 7x7/2 convolution and max-pooling (as in the paper's
    CIFAR networks); four stages of bottleneck blocks with inner widths
    ``width * (1, 2, 4, 8)`` follow, the first block of stages 2-4 with
    stride 2 (32 -> 16 -> 8 -> 4), then global average pooling and a dense
    layer.

    Args:
        classes: number of logits.
        blocks: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        width: the first stage's inner width (ImageNet ResNet-50: 64).
        name: the network's name.

    Returns:
        Sequential.

    Raises:
        ValueError: for a bad width or block count.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width={width!r} must be a positive integer")
    blocks = tuple(blocks)
    if not blocks or any(not isinstance(b, int) or b < 1 for b in blocks):
        raise ValueError(f"blocks={blocks!r} must be positive integers")
    layers = _conv_bn(width, 3, 1, "stem", relu=True)
    channels = width
    for stage, count in enumerate(blocks):
        inner = width * 2 ** stage
        stride = 1 if stage == 0 else 2
        for i in range(count):
            layers.append(bottleneck(channels, inner, stride if i == 0 else 1,
                                     name=f"stage{stage + 1}_block{i + 1}"))
            channels = inner * EXPANSION
    layers += [GlobalAvgPool(name="pool"), Dense(classes, name="fc")]
    return Sequential(layers, name=name)


def resnet50(classes, *, width=16, name="resnet50"):
    """ResNet-50: bottleneck blocks ``[3, 4, 6, 3]`` (see :func:`resnet`).

    Args:
        classes: number of logits.
        width: the first stage's inner width (16: stages of 64 to 512
            output channels; ImageNet's is 64).
        name: the network's name.

    Returns:
        Sequential: ``(C, 32, 32)`` images to ``(classes,)`` logits.
    """
    return resnet(classes, (3, 4, 6, 3), width=width, name=name)
