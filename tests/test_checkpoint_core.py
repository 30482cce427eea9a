"""tmpi_core.checkpoint: atomic one-rank writes, per-rank state, failures
that keep the previous checkpoint — on real ranks and serially."""

import os

import numpy as np
import pytest

from mpirun import run_mpi_json
from tmpi_core.checkpoint import (Checkpointer, get_rng_state,
                                  read_checkpoint, set_rng_state)


def _run(tmp_path, case, ranks=2):
    return run_mpi_json("ckpt_core.py", ranks, tmp_path, "--case", case,
                        "--dir", tmp_path / "ckpt", timeout=60)


def test_roundtrip_shared_and_per_rank_state_with_pruning(tmp_path):
    results = _run(tmp_path, "roundtrip", ranks=3)
    for r, res in enumerate(results):
        assert res["empty"] is True
        assert res["epoch"] == 3 and res["same"] is True
        assert res["w"] == (np.arange(6.0).reshape(2, 3) * 3).tolist()
        assert res["x"] == [10.0 * r + 3] * 3
        assert res["files"] == ["ckpt-00000002.npz", "ckpt-00000003.npz"]
        assert res["paths"] == results[0]["paths"]
    meta, shared, locals_ = read_checkpoint(results[0]["paths"][-1])
    assert meta["ranks"] == 3 and meta["local"] is True
    assert sorted(locals_) == [0, 1, 2]


@pytest.mark.parametrize("case,reason", [
    ("unwritable", "NotADirectoryError"),
    ("full", "File too large")])
def test_failed_write_is_a_clear_error_on_every_rank_and_keeps_previous(
        tmp_path, case, reason):
    results = _run(tmp_path, case)
    for res in results:
        assert res["error"] is not None, res
        assert "could not write a checkpoint in" in res["error"]
        assert reason in res["error"]
        kept = ("no earlier checkpoint exists" if case == "unwritable"
                else "ckpt-00000001.npz is kept")
        assert kept in res["error"]
        assert res["epoch"] == 1
        # no half-written file left behind, no temporary either
        assert res["files"] == ["ckpt-00000001.npz"]


def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    results = _run(tmp_path, "fallback")
    assert results[0]["epoch"] == 1 and results[1]["epoch"] == 1
    assert any("skipped unreadable checkpoint" in w
               for w in results[0]["warned"])


def test_resume_on_other_rank_count_maps_ranks(tmp_path):
    run_mpi_json("ckpt_core.py", 2, tmp_path / "a", "--case", "roundtrip",
                 "--dir", tmp_path / "ckpt", timeout=60)
    store = Checkpointer(tmp_path / "ckpt")     # one process: COMM_WORLD of 1
    ckpt = store.load()
    assert ckpt.ranks == 2 and ckpt.same_ranks is False
    assert ckpt.local["x"].tolist() == [3.0] * 3           # rank 0's


def test_rng_state_roundtrip():
    import random

    state = get_rng_state()
    a = (np.random.rand(3).tolist(), random.random())
    set_rng_state(state)
    assert (np.random.rand(3).tolist(), random.random()) == a


@pytest.mark.parametrize("kwargs,match", [
    ({"directory": None}, "must be a path"),
    ({"directory": "x", "keep": 0}, "keep=0 must be an integer >= 1"),
    ({"directory": "x", "keep": True}, "keep=True")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Checkpointer(**kwargs)


def test_foreign_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "ckpt-00000001.npz"
    np.savez(path, a=np.zeros(2))
    with pytest.raises(ValueError, match="not a tmpi checkpoint"):
        read_checkpoint(str(path))
    assert not os.path.exists(tmp_path / "nothing")
