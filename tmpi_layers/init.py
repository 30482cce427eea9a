"""Weight initialisers: ``f(shape, fan_in, fan_out, rng) -> numpy array``.

Layers call them when they are built; pass one as ``W=`` to
:class:`~tmpi_layers.Dense` or :class:`~tmpi_layers.Conv2D`, or a number
(a constant) or an array (used as is).
"""

import numpy as np

__all__ = ["he_normal", "glorot_uniform", "zeros", "constant", "resolve"]


def he_normal(shape, fan_in, fan_out, rng):
    """Normal with standard deviation ``sqrt(2 / fan_in)`` (He et al. 2015),
    for weights followed by ReLU."""
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)


def glorot_uniform(shape, fan_in, fan_out, rng):
    """Uniform on ``[-a, a]``, ``a = sqrt(6 / (fan_in + fan_out))`` (Glorot &
    Bengio 2010), for weights followed by a linear or tanh output."""
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, shape)


def zeros(shape, fan_in, fan_out, rng):
    """All zeros (biases, batch norm's shift)."""
    return np.zeros(shape)


def constant(value):
    """An initialiser that fills with ``value``.

    Example:
        >>> gamma_init = constant(1.0)
    """
    def fill(shape, fan_in, fan_out, rng):
        return np.full(shape, float(value))
    fill.__doc__ = f"All {value}."
    return fill


def resolve(spec, shape, fan_in, fan_out, rng, *, what):
    """The initial array for ``spec`` (initialiser, number or array).

    Raises:
        ValueError: for an array of the wrong shape or an unusable spec,
            naming ``what`` (the parameter).
    """
    if callable(spec):
        value = np.asarray(spec(shape, fan_in, fan_out, rng))
    elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
        value = np.full(shape, float(spec))
    elif isinstance(spec, np.ndarray):
        value = spec
    else:
        raise ValueError(f"{what}: initialiser {spec!r} is neither a "
                         "function, a number nor an array")
    if value.shape != tuple(shape):
        raise ValueError(f"{what}: initial value has shape {value.shape}, "
                         f"the layer needs {tuple(shape)}")
    return value
