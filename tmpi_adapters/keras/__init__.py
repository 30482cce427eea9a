"""Keras 3 adapter: data-parallel ``model.fit`` over MPI with one callback.

Works with any Keras 3 backend; tested on torch. Example::

    import tmpi_adapters.keras as tmpi_keras
    x, y = tmpi_keras.shard((x, y))
    model.fit(x, y, callbacks=[tmpi_keras.TMPISync("bsp")],
              verbose=tmpi_keras.verbose())

Launch with ``mpiexec -n 4 python train.py``.
"""

from tmpi_adapters.keras.callback import TMPISync
from tmpi_adapters.keras.checkpoint import TMPIBackupAndRestore
from tmpi_adapters.keras.data import ShardedPyDataset, shard
from tmpi_adapters.keras.ranks import is_chief, rank, rank_zero_only, size, verbose

__all__ = [
    "ShardedPyDataset",
    "TMPIBackupAndRestore",
    "TMPISync",
    "is_chief",
    "rank",
    "rank_zero_only",
    "shard",
    "size",
    "verbose",
]
