"""BSP's ``nonfinite`` option: NaN/Inf on one rank is an error naming it, or
a step skipped on every rank — through real ranks, never a hang."""

import numpy as np
import pytest

from mpirun import run_mpi, run_mpi_json
from tmpi_core import BSP


def test_skip_returns_none_on_every_rank_at_the_bad_step(tmp_path):
    results = run_mpi_json("nonfinite.py", 2, tmp_path, "--case", "core-skip")
    for r in results:
        assert r["skipped"] == 1
        # (rank 0 + rank 1) / 2 + step = step + 0.5, except the NaN step
        expected = [s + 0.5 for s in range(6)]
        expected[3] = None
        assert r["outcomes"] == expected


@pytest.mark.parametrize("case,what", [("core-raise", "gradients"),
                                       ("params-raise", "parameters")])
def test_raise_names_the_rank_and_step_on_every_rank(tmp_path, case, what):
    (tmp_path / "o").mkdir()
    proc = run_mpi("nonfinite.py", 2, "--case", case, "--out", tmp_path / "o",
                   check=False, timeout=60)
    assert proc.returncode != 0
    message = f"NonFiniteError: BSP step 3: NaN/Inf {what} on rank(s) [1]"
    for rank in (0, 1):
        assert (tmp_path / "o" / f"rank{rank}.err").read_text().startswith(
            message), proc.stderr[-3000:]
    assert not (tmp_path / "o" / "rank0.json").exists()


def test_keras_skip_keeps_ranks_equal_and_finite(tmp_path):
    pytest.importorskip("keras", reason="the Keras adapter needs keras")
    results = run_mpi_json("nonfinite.py", 2, tmp_path, "--case",
                           "keras-skip")
    for r in results:
        assert r["skipped"] == 1
        assert r["iterations"] == 5             # 6 batches, one skipped
        for a, b in zip(r["weights"], results[0]["weights"]):
            assert np.all(np.isfinite(a))
            np.testing.assert_array_equal(a, b)


def test_keras_raise_ends_the_job(tmp_path):
    pytest.importorskip("keras", reason="the Keras adapter needs keras")
    (tmp_path / "o").mkdir()
    proc = run_mpi("nonfinite.py", 2, "--case", "keras-raise", "--out",
                   tmp_path / "o", check=False, timeout=60)
    assert proc.returncode != 0
    for rank in (0, 1):
        assert "NaN/Inf gradients on rank(s) [1]" in (
            tmp_path / "o" / f"rank{rank}.err").read_text(), proc.stderr


@pytest.mark.parametrize("options,match", [
    ({"nonfinite": "ignore"}, "nonfinite='ignore' must be None"),
    ({"nonfinite": "skip", "mode": "params"}, "needs mode='grads'")])
def test_bad_nonfinite_options(options, match):
    with pytest.raises(ValueError, match=match):
        BSP(**options)


def test_graph_adapters_refuse_skip():
    pytensor = pytest.importorskip(
        "pytensor", reason="PyTensor is tested in .venv")
    import tmpi_adapters.pytensor as tmpi_pytensor

    w = pytensor.shared(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="cannot skip an update inside"):
        tmpi_pytensor.distributed({w: w + 1}, nonfinite="skip")
