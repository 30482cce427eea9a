"""Broadcast a list of arrays from one rank, one collective per dtype."""

import numpy as np

from tmpi_core.buffer import FlatBuffer

__all__ = ["broadcast_arrays"]


def broadcast_arrays(ctx, arrays, root=0):
    """Return ``root``'s values of ``arrays`` on every rank.

    Arrays are grouped by dtype and each group moves in one ``Bcast`` of a
    fused buffer of that dtype, so integers (step counters) and float64 stay
    exact.

    Args:
        ctx: a :class:`~tmpi_core.context.Context`.
        arrays: numpy arrays; every rank passes the same shapes and dtypes
            (check first with :func:`~tmpi_core.checks.check_same_across_ranks`).
        root: the rank whose values win.

    Returns:
        list of numpy arrays, in the input order.
    """
    arrays = [np.asarray(a) for a in arrays]
    if ctx.size == 1:
        return arrays
    out = [None] * len(arrays)
    for dtype in sorted({a.dtype.str for a in arrays}):
        idx = [i for i, a in enumerate(arrays) if a.dtype.str == dtype]
        buf = FlatBuffer([arrays[i].shape for i in idx], dtype=np.dtype(dtype))
        if ctx.rank == root:
            buf.pack([arrays[i] for i in idx])
        ctx.bcast_array(buf.data, root=root)
        for i, view in zip(idx, buf.views):
            out[i] = view
    return out
