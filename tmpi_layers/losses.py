"""Softmax, cross-entropy and accuracy on symbolic logits.

Networks end in a :class:`~tmpi_layers.Dense` layer without activation
(logits); the loss takes the softmax itself, in the numerically stable form.
"""

__all__ = ["softmax", "log_softmax", "cross_entropy", "accuracy"]


def log_softmax(logits, T):
    """``z - log(sum(exp(z)))`` per row, computed after subtracting the row
    maximum (no overflow).

    Args:
        logits: symbolic ``(batch, classes)``.
        T: the tensor module (``lib.T`` of a :class:`tmpi_layers.Backend`).
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - T.log(T.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits, T):
    """Class probabilities ``exp(z_k) / sum_j exp(z_j)`` per row.

    Args:
        logits: symbolic ``(batch, classes)``.
        T: the tensor module.
    """
    return T.exp(log_softmax(logits, T))


def cross_entropy(logits, targets, T):
    """Mean softmax cross-entropy ``mean_i(-log softmax(z_i)[y_i])``.

    Args:
        logits: symbolic ``(batch, classes)``.
        targets: symbolic int vector of class indices.
        T: the tensor module.

    Returns:
        symbolic scalar.
    """
    logp = log_softmax(logits, T)
    return -logp[T.arange(targets.shape[0]), targets].mean()


def accuracy(logits, targets, T, dtype):
    """Fraction of rows whose largest logit is the target class.

    Args:
        logits: symbolic ``(batch, classes)``.
        targets: symbolic int vector.
        T: the tensor module.
        dtype: the result's float dtype.
    """
    return T.cast(T.eq(T.argmax(logits, axis=1), targets), dtype).mean()
