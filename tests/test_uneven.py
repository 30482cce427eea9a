"""Uneven data: 3 ranks with 8, 17 and 26 batches end every epoch together,
and BSP equals a serial replay that averages over the ranks with a batch.

An adapter's two modes share a launch (fixture ``adapter_job``).
"""

import numpy as np
import pytest

from mpirun import once_per_key, run_mpi_configs, run_mpi_json
from uneven_data import replay

COUNTS = (8, 17, 26)
EPOCHS, LR = 2, 0.05


@pytest.fixture(scope="module")
def adapter_job(tmp_path_factory):
    """``adapter_job(entry, lib, modes)``: uneven.py's results on 3 ranks
    through ``entry`` for each BSP mode of ``modes``, from one launch."""
    def launch(entry, lib, modes):
        return run_mpi_configs(
            "uneven.py", 3, tmp_path_factory.mktemp(entry),
            {mode: ("--entry", entry, "--lib", lib, "--mode", mode,
                    "--batches", ",".join(map(str, COUNTS)),
                    "--epochs", EPOCHS, "--lr", LR) for mode in modes},
            timeout=420)

    return once_per_key(launch)


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
def test_adapter_bsp_uneven_equals_replay(adapter_job, entry, mode):
    pytest.importorskip(entry, reason=f"{entry} is tested in .venv")
    _check(adapter_job(entry, "pytensor", ("grads", "params"))[mode])


@pytest.mark.parametrize("mode", ["grads", "params"])
def test_graph_bsp_uneven_equals_replay(adapter_job, mode):
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
    modes = ("grads",) if lib == "theano" else ("grads", "params")
    _check(adapter_job("graph", lib, modes)[mode])

