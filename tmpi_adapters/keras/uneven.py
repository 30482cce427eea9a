"""This rank's batches for ``fit`` when ranks hold different amounts of data.

Made by :meth:`TMPISync.uneven`; the callback runs the agreement that ends
the epoch (see :mod:`tmpi_core.uneven` for what ranks without data do).

Keras ends an epoch of unknown length when its data iterator stops, and
only an iterator it starts anew each epoch can go on after that. The
batches therefore reach ``fit`` as an endless ``torch.utils.data.DataLoader``
(Keras re-iterates a DataLoader every epoch, on every backend where torch
is installed), and the callback ends each epoch at the agreed step with
``model.stop_training``, which it clears again for the next epoch.
"""

import numpy as np

__all__ = ["UnevenData"]


class UnevenData:
    """This rank's own batches, read ahead on demand, then fillers.

    Index ``i`` is this rank's ``i``-th batch of the epoch while it has
    one; after that, a filler: its last real batch with sample weights 0.
    :meth:`has` says which, reading the source ahead as far as asked.

    Args:
        data: a ``keras.utils.PyDataset`` (``__getitem__`` raising
            ``IndexError`` past its end when it has no length), a list of
            batches, or a function returning a fresh iterator per epoch.

    Raises:
        ValueError: for other ``data``; for a batch that is not an
            ``(x, y)`` or ``(x, y, sample_weight)`` tuple.
    """

    def __init__(self, data):
        import keras

        self._pydataset = isinstance(data, keras.utils.PyDataset)
        if not (self._pydataset or isinstance(data, (list, tuple))
                or callable(data)):
            raise ValueError(
                f"uneven(data): data={type(data).__name__} must be a "
                "keras.utils.PyDataset, a list of batches or a function "
                "returning an iterator of batches")
        self.data = data
        self.on_epoch_begin()

    def on_epoch_begin(self):
        """Start this rank's data anew (called by :class:`TMPISync`)."""
        self._cache = {}
        self._fetched = 0           # real batches read so far this epoch
        self._end = None            # this rank's batch count, once known
        self._iterator = None
        self._filler = None
        if self._pydataset:
            self.data.on_epoch_begin()

    def has(self, index):
        """True when this rank has a real batch ``index`` in this epoch."""
        while index >= self._fetched and self._end is None:
            self._fetch(self._fetched)
        return index < self._fetched

    def _fetch(self, index):
        try:
            if self._pydataset:
                length = self.data.num_batches
                if length is not None and index >= length:
                    raise IndexError(index)
                batch = self.data[index]
            elif callable(self.data):
                if self._iterator is None:
                    self._iterator = iter(self.data())
                batch = next(self._iterator)
            else:
                batch = self.data[index]
        except (IndexError, StopIteration):
            self._end = index
            return
        self._cache[index] = _as_tuple(batch)
        self._fetched += 1

    def __getitem__(self, index):
        if self.has(index):
            for old in [k for k in self._cache if k < index]:
                del self._cache[old]
            self._filler = self._cache[index]
            return self._filler
        if self._filler is None:
            raise ValueError(
                "this rank has no batch at all in this epoch, so it cannot "
                "run the steps the other ranks' data takes; give every rank "
                "at least one batch")
        x, y = self._filler[0], self._filler[1]
        return x, y, np.zeros(len(np.asarray(y)), np.float32)

    def loader(self):
        """An endless ``DataLoader`` over this object, for ``fit``."""
        try:
            import torch.utils.data as torch_data
        except ImportError:
            raise ValueError(
                "TMPISync.uneven() hands the batches to fit as a torch "
                "DataLoader (which Keras restarts every epoch); install "
                "torch, or give every rank equal shards (shard())") from None
        source = self

        class _Endless(torch_data.IterableDataset):
            def __iter__(self):
                index = 0
                while True:
                    yield source[index]
                    index += 1

        return torch_data.DataLoader(_Endless(), batch_size=None)


def _as_tuple(batch):
    # Always (x, y, sample_weight): the filler batches carry weights 0, and
    # backends that fix the structure from the first batch (TensorFlow's
    # dataset from the DataLoader) need every batch to have the same.
    if not isinstance(batch, tuple) or len(batch) not in (2, 3):
        raise ValueError(
            "uneven(data) needs batches that are (x, y) or "
            f"(x, y, sample_weight) tuples, got {type(batch).__name__}")
    if len(batch) == 2:
        x, y = batch
        batch = (x, y, np.ones(len(np.asarray(y)), np.float32))
    return batch
