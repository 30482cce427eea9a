"""Threads per rank: a rank's BLAS pool is limited to cores / ranks-on-host
from interpreter start, before the user's first ``import theano`` (or
``import numpy``), unless the user chose a count."""

import os

import pytest

from mpirun import run_mpi_json
from tmpi_core.threads import MARK, limit_at_startup, user_set_threads


def _lib():
    try:
        import theano  # noqa: F401
        return "theano"
    except ImportError:
        return "numpy"


def _clean_env(**extra):
    env = {v: None for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                             "MKL_NUM_THREADS", "TMPI_NUM_THREADS", MARK)}
    env.update(extra)
    return env


@pytest.mark.theano        # .venv-theano runs it with theano imported first
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2 cores to tell 1 busy thread from 2")
def test_library_imported_first_gets_one_thread_per_core_share(tmp_path):
    lib = _lib()
    limited = run_mpi_json("busy_threads.py", 2, tmp_path / "limited",
                           "--lib", lib, env=_clean_env(), timeout=300)
    cores = len(os.sched_getaffinity(0))
    for r in limited:
        assert r["threads"] == max(1, cores // 2)
        assert r["OPENBLAS_NUM_THREADS"] == str(r["threads"])
        assert r["busy"] <= r["threads"], r
    # The same run without the limit: each rank's pool spins on every
    # core, which is what the limit prevents (the check can fail).
    free = run_mpi_json("busy_threads.py", 2, tmp_path / "free",
                        "--lib", lib, timeout=300,
                        env=_clean_env(TMPI_THREAD_LIMIT="0"))
    assert max(r["busy"] for r in free) > max(r["busy"] for r in limited)


def test_limit_at_startup_reads_the_launcher_and_respects_the_user():
    env = {"MPI_LOCALNRANKS": "2"}
    assert limit_at_startup(env, cores=8) == 4
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "4"
    assert not user_set_threads(env)        # tmpi's value, not the user's
    assert limit_at_startup({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, cores=2) == 1
    assert limit_at_startup({}, cores=8) is None            # no launcher
    user = {"MPI_LOCALNRANKS": "2", "OMP_NUM_THREADS": "3"}
    assert limit_at_startup(user, cores=8) is None
    assert user_set_threads(user) and "OPENBLAS_NUM_THREADS" not in user
    assert limit_at_startup({"MPI_LOCALNRANKS": "2", "TMPI_THREAD_LIMIT": "0"},
                            cores=8) is None
