"""Giving each rank its share of the data, so every rank runs equal steps."""

import keras

from tmpi_core import get_context
from tmpi_core import shard as _shard

__all__ = ["ShardedPyDataset", "shard"]


def shard(arrays, *, comm=None):
    """This rank's equal, strided share of ``arrays`` (e.g. ``(x, y)``).

    Every rank gets ``n // ranks`` samples; the last ``n % ranks`` samples
    are dropped so no rank runs an extra step and leaves the others waiting.

    Args:
        arrays: an array or a tuple/list of arrays with equal length.
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.

    Returns:
        the shard(s), in the structure of ``arrays``.

    Raises:
        ValueError: if there are fewer samples than ranks.

    Example:
        >>> x_train, y_train = shard((x_train, y_train))
    """
    ctx = get_context(comm)
    return _shard(arrays, ctx.rank, ctx.size)


class ShardedPyDataset(keras.utils.PyDataset):
    """This rank's share of the batches of a ``keras.utils.PyDataset``.

    Rank ``r`` of ``p`` serves batches ``r, r + p, r + 2p, ...`` of
    ``dataset``, ``len(dataset) // p`` of them, so every rank runs the same
    number of steps; the last ``len(dataset) % p`` batches are skipped.

    Args:
        dataset: a ``keras.utils.PyDataset`` with ``__len__``.
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.

    Raises:
        ValueError: if ``dataset`` is not a ``PyDataset``, has no length or
            has fewer batches than ranks.

    Example:
        >>> model.fit(ShardedPyDataset(MyDataset(...)), callbacks=[TMPISync()])
    """

    def __init__(self, dataset, *, comm=None):
        if not isinstance(dataset, keras.utils.PyDataset):
            raise ValueError(
                f"ShardedPyDataset needs a keras.utils.PyDataset, got "
                f"{type(dataset).__name__}; for arrays use shard((x, y))")
        super().__init__(workers=getattr(dataset, "workers", 1),
                         use_multiprocessing=getattr(
                             dataset, "use_multiprocessing", False),
                         max_queue_size=getattr(dataset, "max_queue_size", 10))
        try:
            n = len(dataset)
        except TypeError:
            raise ValueError(
                "ShardedPyDataset needs a dataset with __len__: an endless "
                "dataset cannot be split into equal shares") from None
        ctx = get_context(comm)
        if n < ctx.size:
            raise ValueError(
                f"the dataset has {n} batches, fewer than the {ctx.size} "
                "ranks: every rank needs at least one batch")
        self.dataset = dataset
        self.rank = ctx.rank
        self.size = ctx.size
        self._len = n // ctx.size

    def __len__(self):
        return self._len

    def __getitem__(self, index):
        if not 0 <= index < self._len:
            raise IndexError(f"batch {index} out of range [0, {self._len})")
        return self.dataset[index * self.size + self.rank]

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()
