"""EASGD on real ranks against a serial simulation of its equations."""

import numpy as np
import pytest

from mpirun import run_mpi, run_mpi_json
from tmpi_core import make_rule

ETA, STEPS, TAU = 0.3, 12, 3


def local_step(x, rank):
    return x - ETA * (x - np.arange(5.0) * (rank + 1))


def simulate_sync(x0, p, alpha):
    """Synchronous EASGD, all ranks in lock-step, in float64."""
    xs = [np.array(x0) for _ in range(p)]
    c = np.array(x0)
    traj = [[] for _ in range(p)]
    for step in range(1, STEPS + 1):
        xs = [local_step(x, r) for r, x in enumerate(xs)]
        if step % TAU == 0:
            s = sum(xs)
            xs = [x - alpha * (x - c) for x in xs]
            c = c + alpha * (s - p * c)
        for r in range(p):
            traj[r].append(xs[r])
    return traj, c


def simulate_one_worker(x0, alpha):
    """Asynchronous EASGD with a single worker (rank 1)."""
    x, c, traj = np.array(x0), np.array(x0), []
    for step in range(1, STEPS + 1):
        x = local_step(x, 1)
        if step % TAU == 0:
            d = alpha * (x - c)
            x, c = x - d, c + d
        traj.append(x)
    return traj, c


@pytest.mark.parametrize("ranks", [2, 3])
def test_synchronous_equals_serial_simulation(tmp_path, ranks):
    results = run_mpi_json("easgd_core.py", ranks, tmp_path, "--synchronous",
                           "--steps", STEPS, "--tau", TAU, "--eta", ETA)
    check_synchronous(results, ranks)


def check_synchronous(results, ranks):
    """easgd_core.py --synchronous against :func:`simulate_sync`."""
    alpha = 0.9 / ranks
    want_traj, want_c = simulate_sync(results[0]["x0"], ranks, alpha)
    for rank, r in enumerate(results):
        assert r["role"] == "peer" and r["alpha"] == pytest.approx(alpha)
        assert r["x0"] == results[0]["x0"]            # broadcast from rank 0
        np.testing.assert_allclose(r["trajectory"], want_traj[rank],
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(r["center"], want_c, rtol=1e-6, atol=1e-6)
        assert r["exchanges"] == STEPS // TAU


def test_asynchronous_one_worker_equals_serial_form(tmp_path):
    check_one_worker(run_mpi_json("easgd_core.py", 2, tmp_path, "--steps",
                                  STEPS, "--tau", TAU, "--eta", ETA))


def check_one_worker(results):
    """easgd_core.py on 2 ranks against :func:`simulate_one_worker`."""
    server, worker = results
    assert (server["role"], worker["role"]) == ("server", "worker")
    alpha = 0.9                                  # beta / (p - 1) workers
    want_traj, want_c = simulate_one_worker(worker["x0"], alpha)
    np.testing.assert_allclose(worker["trajectory"], want_traj, rtol=1e-6,
                               atol=1e-6)
    for r in (server, worker):
        np.testing.assert_allclose(r["center"], want_c, rtol=1e-6, atol=1e-6)
    assert server["exchanges"] == worker["exchanges"] == STEPS // TAU


@pytest.mark.parametrize("ranks", [3, 4])
def test_asynchronous_center_moves_only_by_elastic_differences(tmp_path,
                                                               ranks):
    results = run_mpi_json("easgd_core.py", ranks, tmp_path, "--steps", 30,
                           "--tau", 2, "--delays", timeout=120)
    check_center_books(results, ranks)


def check_center_books(results, ranks):
    """easgd_core.py --steps 30 --tau 2: the server's and the workers'
    elastic books agree, and every rank ends on the center."""
    server, workers = results[0], results[1:]
    c0 = np.array(server["x0"])
    moved = np.array(server["center"]) - c0
    # the server's books: the center moved by exactly what it sent out ...
    np.testing.assert_allclose(moved, server["elastic_total"], rtol=1e-5,
                               atol=1e-6)
    # ... which is what the workers received, in total
    np.testing.assert_allclose(
        sum(np.array(w["elastic_total"]) for w in workers), moved, rtol=1e-5,
        atol=1e-6)
    assert server["exchanges"] == sum(w["exchanges"] for w in workers) \
        == (ranks - 1) * 15
    for r in results:                              # everyone ends on c
        np.testing.assert_array_equal(r["center"], server["center"])


@pytest.mark.parametrize("kwargs,match", [
    ({"tau": 0}, "tau=0 must be >= 1"),
    ({"alpha": 1.5}, r"alpha=1.5 must lie in \(0, 1\)"),
    ({"alpha": 0.0}, r"alpha=0.0 must lie in \(0, 1\)"),
    ({"beta": 0}, r"beta=0.0 must lie in \(0, 1\]"),
    ({"synchronous": "yes"}, "synchronous='yes' must be True or False"),
    ({"every": 2}, r"unknown option\(s\) \['every'\] for rule 'easgd'"),
])
def test_bad_easgd_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_rule("easgd", **kwargs)


def test_easgd_on_one_rank_is_a_clear_error(tmp_path):
    proc = run_mpi("easgd_core.py", 1, "--out", tmp_path, check=False,
                   timeout=60)
    assert proc.returncode != 0
    assert "EASGD needs at least 2 ranks" in proc.stderr
