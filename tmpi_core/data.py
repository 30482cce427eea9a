"""Sharding by rank and readers for the data users already have on disk.

Nothing here downloads: the default data set is scikit-learn's bundled
digits (1797 real 8x8 images); CIFAR-10 python batches and MNIST-style IDX
files are read from a directory the user names.
"""

import gzip
import os
import pickle
import struct

import numpy as np

__all__ = [
    "shard_indices",
    "shard",
    "load_digits",
    "load_cifar10",
    "load_idx",
    "load_mnist",
    "load_dataset",
]

DATASETS = ("digits", "cifar10", "mnist")


def shard_indices(n, rank, size):
    """Indices of rank ``rank``'s shard of ``n`` samples.

    Strided (``rank, rank + size, ...``) and truncated to ``n // size`` each,
    so every rank gets exactly as many samples and runs as many steps: a data
    set that does not divide evenly drops its last ``n % size`` samples
    instead of leaving one rank waiting in a collective. With per-rank batch
    ``b`` and no shuffling, the union of the ranks' ``k``-th batches is the
    ``k``-th batch of size ``p*b`` of the unsharded data.

    Args:
        n: number of samples.
        rank: this rank.
        size: number of ranks.

    Returns:
        numpy int array of length ``n // size``.

    Raises:
        ValueError: if ``n < size`` (some rank would get nothing) or the rank
            is out of range.
    """
    n, rank, size = int(n), int(rank), int(size)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank={rank} must lie in [0, size={size})")
    if n < size:
        raise ValueError(
            f"cannot shard {n} samples over {size} ranks: every rank needs at "
            "least one sample; use fewer ranks or more data"
        )
    per = n // size
    return np.arange(rank, per * size, size)


def shard(arrays, rank, size):
    """Return this rank's shard of each array (see :func:`shard_indices`).

    Args:
        arrays: an array or a list/tuple of arrays with equal first dimension.
        rank: this rank.
        size: number of ranks.

    Returns:
        the shard(s), in the same structure as ``arrays``.

    Raises:
        ValueError: if the arrays' lengths differ or are smaller than ``size``.

    Example:
        >>> x, y = shard((x, y), rank=ctx.rank, size=ctx.size)
    """
    single = not isinstance(arrays, (list, tuple))
    seq = [arrays] if single else list(arrays)
    if not seq:
        raise ValueError("no arrays to shard: pass an array or (x, y)")
    if any(np.ndim(a) == 0 for a in seq):
        raise ValueError(
            "arrays to shard must be arrays with a sample dimension first, "
            f"got {[type(a).__name__ for a in seq]}; shard a dict of "
            "inputs value by value")
    lengths = {len(a) for a in seq}
    if len(lengths) != 1:
        raise ValueError(
            f"arrays to shard have different lengths {sorted(lengths)}"
        )
    idx = shard_indices(lengths.pop(), rank, size)
    out = [np.asarray(a)[idx] for a in seq]
    return out[0] if single else type(arrays)(out)


def load_digits(*, test_fraction=0.2, seed=0):
    """scikit-learn's bundled digits: 1797 real 8x8 grey images, 10 classes.

    Args:
        test_fraction: fraction held out as the test split.
        seed: seed of the fixed permutation before the split.

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` with ``x`` float32 of shape
        ``(n, 8, 8, 1)`` scaled to [0, 1] and ``y`` int64 labels.

    Raises:
        ImportError: if scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the default digits data comes with scikit-learn: "
            "pip install scikit-learn"
        ) from e
    bunch = _sk_load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    y = bunch.target.astype(np.int64)
    return _split(x, y, test_fraction, seed)


def load_cifar10(data_dir):
    """Read the CIFAR-10 "python version" batches from ``data_dir``.

    ``data_dir`` is the ``cifar-10-batches-py`` folder (or its parent) with
    ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``, ``x`` float32
        ``(n, 32, 32, 3)`` in [0, 1], ``y`` int64.

    Raises:
        FileNotFoundError: naming the missing batch file.
    """
    folder = data_dir
    if not os.path.exists(os.path.join(folder, "test_batch")):
        folder = os.path.join(data_dir, "cifar-10-batches-py")
    def read(name):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"CIFAR-10 batch {name!r} not found under {data_dir!r}; expected "
                "the 'cifar-10-batches-py' folder of the python version"
            )
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return x.transpose(0, 2, 3, 1), np.asarray(d[b"labels"], np.int64)
    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_tr = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = read("test_batch")
    return (x_tr, y_tr), (x_te.astype(np.float32) / 255.0, y_te)


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
              0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path):
    """Read one IDX file (MNIST format), optionally gzip-compressed.

    Returns:
        numpy array with the file's shape and type.

    Raises:
        ValueError: if the file is not IDX.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path!r} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path!r} is truncated: its IDX header is cut off")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - 4 - 4 * ndim != want:
        raise ValueError(
            f"{path!r} holds {len(raw) - 4 - 4 * ndim} bytes of data; its "
            f"header says shape {shape} ({want} bytes): the file is "
            "truncated or damaged")
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    return data.reshape(shape)


def load_mnist(data_dir):
    """Read MNIST or Fashion-MNIST IDX files from ``data_dir``.

    Looks for ``train-images-idx3-ubyte`` and the three companion files,
    plain or ``.gz``.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``, ``x`` float32
        ``(n, 28, 28, 1)`` in [0, 1], ``y`` int64.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    def find(stem):
        for name in (stem, stem + ".gz"):
            path = os.path.join(data_dir, name)
            if os.path.exists(path):
                return path
        raise FileNotFoundError(f"{stem}[.gz] not found under {data_dir!r}")
    def images(stem):
        return (load_idx(find(stem)).astype(np.float32) / 255.0)[..., None]
    def labels(stem):
        return load_idx(find(stem)).astype(np.int64)
    return ((images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte")),
            (images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte")))


def load_dataset(name, data_dir=None):
    """Load a data set by name, as the zoo's ``--data``/``--data-dir`` do.

    Args:
        name: ``'digits'`` (bundled), ``'cifar10'`` or ``'mnist'`` (also
            Fashion-MNIST), the last two read from ``data_dir``.
        data_dir: the folder with the files (``~`` is expanded).

    Returns:
        ``(x_train, y_train), (x_test, y_test)``, images NHWC float32.

    Raises:
        ValueError: for an unknown name, or no ``data_dir`` where one is
            needed.
    """
    if name not in DATASETS:
        raise ValueError(f"data set {name!r} is unknown; choose one of "
                         f"{list(DATASETS)}")
    if name == "digits":
        return load_digits()
    if data_dir is None:
        raise ValueError(f"data set {name!r} is read from disk: give its "
                         "folder (--data-dir DIR)")
    data_dir = os.path.expanduser(data_dir)
    return load_cifar10(data_dir) if name == "cifar10" else load_mnist(data_dir)


def _split(x, y, test_fraction, seed):
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must lie in (0, 1)")
    perm = np.random.RandomState(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return (x[tr], y[tr]), (x[te], y[te])
