"""Update rules: ``f(grads, params, lib, ...) -> [(shared, new_value)]``.

Pure functions over symbolic gradients, as a graph library's ``function``
takes them; :meth:`tmpi_layers.Model.train_step` picks one by name, or takes
any function of ``(grads, params)`` that returns update pairs.
"""

import numpy as np

__all__ = ["sgd", "momentum"]


def sgd(grads, params, lib, *, lr):
    """Plain SGD: ``p <- p - lr * g``.

    Args:
        grads: symbolic gradients, one per parameter.
        params: the shared variables.
        lib: the :class:`tmpi_layers.Backend` (unused; the same signature as
            :func:`momentum`).
        lr: learning rate.

    Returns:
        list of ``(param, new_value)`` pairs.
    """
    return [(p, p - lr * g) for p, g in zip(params, grads)]


def momentum(grads, params, lib, *, lr, mu=0.9, nesterov=False):
    """Momentum SGD (Polyak 1964; Nesterov's form, Sutskever et al. 2013).

    ``v <- mu v - lr g``; ``p <- p + v`` (or, Nesterov,
    ``p <- p + mu v - lr g`` with the new ``v``). The velocities are new
    shared variables, zero at start, named after their parameter.

    Args:
        grads: symbolic gradients, one per parameter.
        params: the shared variables.
        lib: the :class:`tmpi_layers.Backend`.
        lr: learning rate.
        mu: momentum, in [0, 1).
        nesterov: use Nesterov's form.

    Returns:
        list of ``(velocity, new)`` and ``(param, new)`` pairs.
    """
    if not 0.0 <= mu < 1.0:
        raise ValueError(f"momentum={mu!r} must lie in [0, 1)")
    updates = []
    for p, g in zip(params, grads):
        value = p.get_value(borrow=True)
        v = lib.shared(np.zeros(value.shape, value.dtype),
                       f"{p.name}.velocity")
        v_new = mu * v - lr * g
        updates.append((v, v_new))
        updates.append((p, p + (mu * v_new - lr * g if nesterov else v_new)))
    return updates
