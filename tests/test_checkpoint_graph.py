"""Checkpoint and resume through the Theano/Lasagne and PyTensor adapters.

A library's uninterrupted reference runs share one launch (fixture
``uninterrupted``); killed, resumed and interrupted runs have their own.
"""

import os
import time

import numpy as np
import pytest

from mpirun import (once_per_key, run_mpi, run_mpi_configs,
                    run_mpi_interrupted, run_mpi_json)
from test_graph_adapters import _lib
from tmpi_core.checkpoint import read_checkpoint

LIBS = ["pytensor", "theano"]
RESUMED = [("updates", "momentum"), ("grads", "adam")]


def _latest(ckpt):
    names = sorted(n for n in os.listdir(ckpt) if n.startswith("ckpt-"))
    return read_checkpoint(os.path.join(ckpt, names[-1]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``uninterrupted(lib)``: graph_ckpt.py's uninterrupted runs on 2
    ranks for every (entry, optimizer) of RESUMED, one launch per library,
    by ``"entry-optimizer"``."""
    def launch(lib):
        refs = tmp_path_factory.mktemp(f"{lib}-ref")
        return run_mpi_configs(
            "graph_ckpt.py", 2, tmp_path_factory.mktemp(lib),
            {f"{entry}-{optimizer}": (
                "--lib", lib, "--entry", entry, "--optimizer", optimizer,
                "--ckpt", refs / f"{entry}-{optimizer}")
             for entry, optimizer in RESUMED}, timeout=420)

    return once_per_key(launch)


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("entry,optimizer", RESUMED)
def test_resume_after_kill_equals_uninterrupted(tmp_path, uninterrupted, lib,
                                                entry, optimizer):
    _lib(lib)
    check_resume_after_kill(
        tmp_path, lib, entry, optimizer,
        reference=uninterrupted(lib)[f"{entry}-{optimizer}"])


def check_resume_after_kill(tmp_path, lib, entry, optimizer, *, run=None,
                            run_json=None, reference=None):
    """Uninterrupted, killed at epoch 2 (the last rank), resumed: the
    resumed run ends where the uninterrupted one did. ``run`` and
    ``run_json`` launch as ``run_mpi`` and ``run_mpi_json`` (the defaults)
    do; ``reference``: the uninterrupted run's results if already run."""
    run = run_mpi if run is None else run
    run_json = run_mpi_json if run_json is None else run_json
    common = ("--lib", lib, "--entry", entry, "--optimizer", optimizer)
    if reference is None:
        reference = run_json("graph_ckpt.py", 2, tmp_path / "a",
                             "--ckpt", tmp_path / "ref", *common)
    ckpt = tmp_path / "ckpt"
    (tmp_path / "b").mkdir()
    proc = run("graph_ckpt.py", 2, "--out", tmp_path / "b", "--ckpt",
               ckpt, *common, "--kill", "2:3", check=False)
    assert proc.returncode != 0
    killed_at = float((tmp_path / "b" / "killed_at").read_text())
    assert time.time() - killed_at < 30         # the launcher's reaction
    meta, shared, locals_ = _latest(ckpt)
    assert meta["epoch"] == 2
    if entry == "grads":             # BSP on gradients: ranks equal, saved once
        assert "var/0" in shared
    else:                            # momentum buffers differ per rank
        assert "var/0" in locals_[0] and "var/0" in locals_[1]
    resumed = run_json("graph_ckpt.py", 2, tmp_path / "c", "--ckpt",
                       ckpt, *common)
    assert resumed[0]["start"] == 2
    for rank in range(2):
        for a, b in zip(resumed[rank]["params"], reference[rank]["params"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule,options,ranks", [
    ("gosgd", '{"p": 0.5, "seed": 2}', 2),
    ("easgd", '{"tau": 2}', 3)], ids=["gosgd", "easgd-async"])
def test_asynchronous_rules_checkpoint_and_resume(tmp_path, rule, options,
                                                  ranks):
    _lib("pytensor")
    common = ("--rule", rule, "--options", options, "--ckpt",
              tmp_path / "ckpt")
    (tmp_path / "a").mkdir()
    proc = run_mpi("graph_ckpt.py", ranks, "--out", tmp_path / "a", *common,
                   "--kill", "2:3", check=False)
    assert proc.returncode != 0
    killed_at = float((tmp_path / "a" / "killed_at").read_text())
    assert time.time() - killed_at < 30
    meta, shared, locals_ = _latest(tmp_path / "ckpt")
    assert meta["rule"]["rule"] == rule
    if rule == "easgd":
        assert meta["center_only"] and "center/0" in shared
    else:
        weights = [__import__("json").loads(
            locals_[r]["rule/json"].tobytes().decode())["weight"]
            for r in range(ranks)]
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
    results = run_mpi_json("graph_ckpt.py", ranks, tmp_path / "b", *common)
    for r in results[1:]:
        for a, b in zip(r["params"], results[0]["params"]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_sigint_stops_every_rank_with_one_checkpoint(tmp_path):
    _lib("pytensor")
    check_sigint(tmp_path)


def check_sigint(tmp_path, *, run_interrupted=None):
    """Ctrl-C to the launcher of 2 ranks: every rank stops, one checkpoint
    marked interrupted, the last. ``run_interrupted`` launches as
    ``run_mpi_interrupted`` (the default) does."""
    if run_interrupted is None:
        run_interrupted = run_mpi_interrupted
    out = tmp_path / "out"
    out.mkdir()
    ckpt = tmp_path / "ckpt"
    proc = run_interrupted(
        "graph_ckpt.py", 2, out / "marker", "--out", out, "--ckpt", ckpt,
        "--epochs", 1000, "--mark", "1:2", "--slow", 0.01)
    stderr = proc.stderr
    assert proc.returncode != 0
    for rank in (0, 1):
        assert (out / f"rank{rank}.err").read_text().startswith(
            "Interrupted: stopped at epoch"), stderr[-3000:]
    interrupted = []
    for name in sorted(os.listdir(ckpt)):
        meta, _, _ = read_checkpoint(os.path.join(ckpt, name))
        interrupted.append(meta["interrupted"])
    assert interrupted.count(True) == 1 and interrupted[-1] is True
