"""Uneven data: 3 ranks with 8, 17 and 26 batches end every epoch together,
and BSP equals a serial replay that averages over the ranks with a batch."""

import numpy as np
import pytest

from mpirun import run_mpi_json
from uneven_data import replay

COUNTS = (8, 17, 26)
EPOCHS, LR = 2, 0.05


def _check(ranks):
    want = replay(COUNTS, EPOCHS, LR)
    for r, result in enumerate(ranks):
        assert result["own"] == COUNTS[r]
        assert result["steps"] == [max(COUNTS)] * EPOCHS, result
        np.testing.assert_allclose(np.reshape(result["w"], want.shape), want,
                                   rtol=2e-5, atol=2e-6)
    # and the ranks hold the very same weights
    for result in ranks[1:]:
        assert result["w"] == ranks[0]["w"]


@pytest.mark.parametrize("mode", ["grads", "params"])
def test_core_bsp_uneven_equals_replay(tmp_path, mode):
    _check(run_mpi_json("uneven.py", 3, tmp_path, "--entry", "core",
                        "--mode", mode, "--batches",
                        ",".join(map(str, COUNTS)), "--epochs", EPOCHS,
                        "--lr", LR, timeout=120))


def test_core_gosgd_uneven_ends_without_a_hang(tmp_path):
    # GoSGD does not run lockstep: a rank that is out waits in the
    # agreement without training; the consensus is reached by all.
    ranks = run_mpi_json("uneven.py", 3, tmp_path, "--entry", "core",
                         "--rule", "gosgd", "--batches",
                         ",".join(map(str, COUNTS)), "--epochs", EPOCHS,
                         timeout=120)
    for r, result in enumerate(ranks):
        assert result["steps"] == [COUNTS[r]] * EPOCHS
    for result in ranks[1:]:
        np.testing.assert_allclose(result["w"], ranks[0]["w"], rtol=1e-6)


@pytest.mark.parametrize("mode", ["grads", "params"])
@pytest.mark.parametrize("entry", ["keras", "torch"])
def test_adapter_bsp_uneven_equals_replay(tmp_path, entry, mode):
    pytest.importorskip(entry, reason=f"{entry} is tested in .venv")
    _check(run_mpi_json("uneven.py", 3, tmp_path, "--entry", entry,
                        "--mode", mode, "--batches",
                        ",".join(map(str, COUNTS)), "--epochs", EPOCHS,
                        "--lr", LR, timeout=300,
                        env={"KERAS_BACKEND": "torch"}))


@pytest.mark.parametrize("mode", ["grads", "params"])
def test_graph_bsp_uneven_equals_replay(tmp_path, mode):
    try:
        import theano  # noqa: F401
        lib = "theano"
    except ImportError:
        pytest.importorskip("pytensor", reason="PyTensor is tested in .venv")
        lib = "pytensor"
    if lib == "theano" and mode == "params":
        pytest.skip("the graph code is the same for both libraries; params "
                    "mode runs on PyTensor in .venv (a Theano compile on 3 "
                    "ranks costs a minute)")
    _check(run_mpi_json("uneven.py", 3, tmp_path, "--entry", "graph",
                        "--lib", lib, "--mode", mode, "--batches",
                        ",".join(map(str, COUNTS)), "--epochs", EPOCHS,
                        "--lr", LR, timeout=300))

