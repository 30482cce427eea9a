"""Data readers: the bundled digits, CIFAR-10 python batches, IDX files."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from tmpi_core import load_dataset, load_digits, load_idx


def write_idx(path, array):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + data)


def test_digits_are_the_real_bundled_set():
    (x_tr, y_tr), (x_te, y_te) = load_digits()
    assert len(x_tr) + len(x_te) == 1797 and x_tr.shape[1:] == (8, 8, 1)
    assert x_tr.dtype == np.float32 and 0 <= x_tr.min() and x_tr.max() <= 1
    assert set(np.unique(y_tr)) == set(range(10))


def test_idx_and_mnist_layout(tmp_path):
    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, size=(5, 28, 28)).astype(np.uint8)
    labels = rs.randint(0, 10, size=5).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:2])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:2])
    np.testing.assert_array_equal(
        load_idx(str(tmp_path / "train-images-idx3-ubyte.gz")), images)
    (x_tr, y_tr), (x_te, y_te) = load_dataset("mnist", str(tmp_path))
    assert x_tr.shape == (5, 28, 28, 1) and x_te.shape == (2, 28, 28, 1)
    np.testing.assert_allclose(x_tr[..., 0], images / 255.0, rtol=1e-6)
    assert y_tr.tolist() == labels.tolist()
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_idx(str(tmp_path / "bad"))


def test_cifar10_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rs = np.random.RandomState(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rs.randint(0, 256, size=(3, 3072)).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [1, 2, 3]}, f)
    (x_tr, y_tr), (x_te, y_te) = load_dataset("cifar10", str(tmp_path))
    assert x_tr.shape == (15, 32, 32, 3) and x_te.shape == (3, 32, 32, 3)
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"][0]
    # channel-major rows become HWC images
    np.testing.assert_allclose(x_te[0, 0, 0], raw[[0, 1024, 2048]] / 255.0,
                               rtol=1e-6)
    assert y_tr.tolist() == [1, 2, 3] * 5


def test_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="data set 'svhn' is unknown"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="give its folder"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_dataset("cifar10", str(tmp_path))
