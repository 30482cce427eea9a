"""The asynchronous rules (EASGD, GoSGD) through TMPISync on real ranks.

One job per rank count trains every configuration of :data:`CONFIGS` for
it in turn; each test checks its configuration's results.
"""

import json

import numpy as np
import pytest

pytest.importorskip("keras", reason="the Keras adapter needs keras")

from mpirun import run_mpi_configs  # noqa: E402

_EASGD = ("--rule", "easgd", "--options", json.dumps({"tau": 2}),
          "--epochs", 2, "--fits", 2)
_SYNC_EASGD = ("--rule", "easgd", "--options",
               json.dumps({"tau": 2, "synchronous": True}), "--epochs", 2)
_GOSGD = ("--rule", "gosgd", "--options", json.dumps({"p": 0.5, "seed": 3}),
          "--epochs", 2, "--fits", 2)

#: keras_fit.py's options per rank count and configuration
CONFIGS = {
    2: {"easgd": _EASGD, "sync-easgd": _SYNC_EASGD, "gosgd": _GOSGD},
    3: {"easgd": _EASGD, "gosgd": _GOSGD},
}


@pytest.fixture(scope="module")
def job(request, tmp_path_factory):
    """The results of one job on ``request.param`` ranks that trained every
    configuration of ``CONFIGS[ranks]``, by configuration name."""
    ranks = request.param
    return run_mpi_configs("keras_fit.py", ranks,
                           tmp_path_factory.mktemp(f"ranks{ranks}"),
                           CONFIGS[ranks], timeout=480)


def _flat(weights):
    return np.concatenate([np.ravel(w) for w in weights])


@pytest.mark.parametrize("job", [2, 3], indirect=True)
def test_asynchronous_easgd_ends_on_the_center(job):
    check_asynchronous_easgd(job["easgd"])


def check_asynchronous_easgd(results):
    """keras_fit.py with asynchronous EASGD: rank 0 serves, every rank ends
    on the center, which moved; workers log their own epochs."""
    ranks = len(results)
    assert [r["role"] for r in results] == ["server"] + ["worker"] * (ranks - 1)
    final = [_flat(r["weights"]) for r in results]
    for f in final[1:]:
        np.testing.assert_array_equal(f, final[0])
    # the center moved away from the broadcast start: workers trained
    assert np.abs(final[0] - _flat(results[0]["initial"])).max() > 1e-3
    # workers report their own, local logs; the server ran one empty step
    # (two fit calls: the callback and the rule start a new round each)
    assert all(len(h["loss"]) == 2 for r in results[1:] for h in r["histories"])


@pytest.mark.parametrize("job", [2], indirect=True)
def test_synchronous_easgd_trains_every_rank_with_global_logs(job):
    check_synchronous_easgd(job["sync-easgd"])


def check_synchronous_easgd(results):
    """keras_fit.py with synchronous EASGD: every rank a peer, all ending
    on the same weights with the same (global) logs, the loss falling."""
    assert [r["role"] for r in results] == ["peer"] * len(results)
    for r in results[1:]:
        np.testing.assert_array_equal(_flat(r["weights"]),
                                      _flat(results[0]["weights"]))
        assert r["histories"] == results[0]["histories"]
    assert results[0]["histories"][0]["loss"][-1] < \
        results[0]["histories"][0]["loss"][0]


@pytest.mark.parametrize("job", [2, 3], indirect=True)
def test_gosgd_ends_on_the_consensus(job):
    check_gosgd(job["gosgd"])


def check_gosgd(results):
    """keras_fit.py with GoSGD: every rank ends on the consensus, which
    moved, with the logs averaged at epoch ends."""
    final = [_flat(r["weights"]) for r in results]
    for f in final[1:]:
        np.testing.assert_array_equal(f, final[0])
    assert np.abs(final[0] - _flat(results[0]["initial"])).max() > 1e-3
    # logs are averaged at epoch ends, as for BSP
    for r in results[1:]:
        assert r["histories"] == results[0]["histories"]
