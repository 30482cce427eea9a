"""The tiny tmpi_layers models the layer tests train, shared by the MPI
script (tests/mpi/layers_fit.py) and the single-process references."""

import numpy as np

#: Per model: the smallest width that keeps its structure.
WIDTHS = {"alexnet": 1 / 32, "resnet50": 1}
#: Per model: how its steps compile. ResNet-50's training graph (about
#: 8,000 nodes) takes minutes through PyTensor's rewrites and C linker,
#: seconds without (tmpi_layers.backend).
COMPILES = {"alexnet": "optimized", "resnet50": "quick"}
SIDE = 32


def build(lib, name, seed):
    """AlexNet (no dropout, no batch norm: deterministic) or ResNet-50 (all
    53 convolutions and batch norms, blocks [3, 4, 6, 3]) at the narrowest
    width, on 1x32x32 inputs, 3 classes."""
    from tmpi_layers import Model, models

    if name == "alexnet":
        net = models.alexnet(3, width=WIDTHS[name], dropout=0.0)
    else:
        net = models.resnet50(3, width=WIDTHS[name])
    return Model(net, (1, SIDE, SIDE), lib=lib, seed=seed, dtype="float64",
                 compile=COMPILES[name])


def layer_data(n):
    """``n`` images whose class (0-2) is which third of the image is bright."""
    rs = np.random.RandomState(7)
    y = rs.randint(0, 3, n)
    x = rs.normal(0, 0.3, (n, 1, SIDE, SIDE))
    third = SIDE // 3
    for i, c in enumerate(y):
        x[i, :, c * third:(c + 1) * third] += 1.0
    return x, y.astype(np.int32)
