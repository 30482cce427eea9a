"""Rank helpers: progress bars and saving on rank 0 only."""

from tmpi_core import get_context

__all__ = ["is_chief", "rank", "rank_zero_only", "size", "verbose"]


def rank(*, comm=None):
    """This process's rank (0 when not launched under MPI)."""
    return get_context(comm).rank


def size(*, comm=None):
    """The number of ranks (1 when not launched under MPI)."""
    return get_context(comm).size


def is_chief(*, comm=None):
    """True on rank 0, the rank that prints and saves."""
    return get_context(comm).rank == 0


def verbose(level="auto", *, comm=None):
    """``level`` on rank 0 and 0 elsewhere, for ``fit(verbose=...)``.

    Example:
        >>> model.fit(x, y, verbose=verbose(2))   # one line per epoch, once
    """
    return level if is_chief(comm=comm) else 0


def rank_zero_only(*callbacks, comm=None):
    """The given callbacks on rank 0 and an empty list elsewhere.

    For callbacks that write files or print (``ModelCheckpoint``,
    ``CSVLogger``, ``TensorBoard``): with ``TMPISync`` every rank holds the
    same weights and global logs, so one writer is enough.

    Example:
        >>> callbacks = [TMPISync()] + rank_zero_only(
        ...     keras.callbacks.ModelCheckpoint("best.keras"))
    """
    return list(callbacks) if is_chief(comm=comm) else []
