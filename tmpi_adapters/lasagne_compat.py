"""Run PyPI's Lasagne 0.1 on Theano 1.0: the ``downsample`` module it imports.

Lasagne 0.1's pooling layers call
``theano.tensor.signal.downsample.max_pool_2d(input, ds=, st=,
ignore_border=, padding=, mode=)``; Theano 0.9 renamed that module ``pool``
and the function ``pool_2d(input, ws=, stride=, pad=, mode=)``. This module
provides the old names on top of the new ones.

In an environment installed with tmpi the alias is registered at interpreter
start (see :mod:`tmpi_adapters._theano_env`), so ``import lasagne`` just
works; elsewhere call :func:`install_downsample_alias` before importing
Lasagne.
"""

import sys
import types

__all__ = ["fill_downsample_module", "install_downsample_alias"]

NAME = "theano.tensor.signal.downsample"


def fill_downsample_module(module):
    """Put Theano 0.8's ``downsample`` API on ``module``; return it."""
    from theano.tensor.signal import pool

    def max_pool_2d(input, ds, ignore_border=None, st=None, padding=(0, 0),
                    mode="max"):
        """Theano 0.8 ``max_pool_2d`` on Theano 1.0's ``pool_2d``."""
        return pool.pool_2d(input, ws=ds, ignore_border=ignore_border,
                            stride=st, pad=padding, mode=mode)

    module.max_pool_2d = max_pool_2d
    module.max_pool_2d_same_size = pool.max_pool_2d_same_size
    module.DownsampleFactorMax = pool.Pool
    return module


def install_downsample_alias():
    """Register ``theano.tensor.signal.downsample`` now (idempotent).

    Returns:
        the module.
    """
    if NAME not in sys.modules:
        sys.modules[NAME] = fill_downsample_module(types.ModuleType(NAME))
    import theano.tensor.signal as signal

    signal.downsample = sys.modules[NAME]
    return sys.modules[NAME]
