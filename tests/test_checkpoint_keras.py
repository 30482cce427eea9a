"""Checkpoint and resume through TMPISync, with real processes killed.

Runs that end well and that nothing is killed in share launches: one
2-rank job (fixture ``two_ranks``) runs every configuration of
:data:`TWO_RANKS`, then one 3-rank job (``three_ranks``) those of
:data:`THREE_RANKS`, some resuming the 2-rank job's checkpoints. Each
test checks its configurations' results. Runs that fail, are killed or
are interrupted have a launch of their own.
"""

import json
import os
import time

import numpy as np
import pytest

pytest.importorskip("keras", reason="the Keras adapter needs keras")

from mpirun import run_mpi, run_mpi_configs, run_mpi_interrupted  # noqa: E402
from tmpi_core.checkpoint import read_checkpoint  # noqa: E402

KILL_LIMIT = 30          # the bound for a killed rank
GOSGD_FOR_3 = ("--rule", "gosgd", "--options", '{"p": 0.5, "seed": 4}')

#: keras_ckpt.py's options per configuration of the 2-rank job; each
#: ``--ckpt`` is a directory of that name under the fixture's folder
TWO_RANKS = {
    # test_bsp_resume_after_kill_equals_uninterrupted: uninterrupted
    "whole-adam": ("--optimizer", "adam"),
    # test_bsp_resumes_on_other_rank_count_with_a_warning: 2 epochs
    "bsp-for-3": ("--ckpt", "bsp-for-3", "--epochs", "2"),
    # test_resume_with_other_rule_options_is_refused: 1 epoch
    "bsp-for-options": ("--ckpt", "bsp-for-options", "--epochs", "1"),
    # test_gosgd_checkpoint_refuses_another_rank_count: 1 epoch
    "gosgd-for-3": (*GOSGD_FOR_3, "--ckpt", "gosgd-for-3", "--epochs", "1"),
}
#: the 3-rank job's, after the 2-rank job
THREE_RANKS = {
    # test_bsp_resumes_on_other_rank_count_with_a_warning: resumed on 3
    "bsp-on-3": ("--ckpt", "bsp-for-3", "--epochs", "3", "--n", "144"),
    # test_gosgd_checkpoint_keeps_total_weight
    "gosgd-weight": ("--rule", "gosgd", "--options", '{"p": 0.7, "seed": 5}',
                     "--ckpt", "gosgd-weight", "--epochs", "2", "--n", "144",
                     "--keep", "5"),
}


def _in(folder, configs):
    """``configs`` with each ``--ckpt NAME`` made ``folder/NAME``."""
    return {name: tuple(folder / v if k == "--ckpt" else v
                        for k, v in zip(("",) + options, options))
            for name, options in configs.items()}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The folder of the shared jobs' checkpoint directories."""
    return tmp_path_factory.mktemp("ckpts")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, checkpoints):
    """Every 2-rank configuration's results, from one launch."""
    return run_mpi_configs("keras_ckpt.py", 2,
                           tmp_path_factory.mktemp("two"),
                           _in(checkpoints, TWO_RANKS), timeout=480)


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory, checkpoints, two_ranks):
    """Every 3-rank configuration's results, from one launch after the
    2-rank job."""
    return run_mpi_configs("keras_ckpt.py", 3,
                           tmp_path_factory.mktemp("three"),
                           _in(checkpoints, THREE_RANKS), timeout=480)


def _run(tmp_path, ranks, *args, check=True, timeout=120):
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    proc = run_mpi("keras_ckpt.py", ranks, "--out", out, *args,
                   check=check, timeout=timeout)
    return proc, time.monotonic() - start, out


def _results(out, ranks):
    return [json.load(open(out / f"rank{r}.json")) for r in range(ranks)]


def _seconds_since_kill(out):
    """Seconds from the rank's SIGKILL to now (the launcher has returned)."""
    return time.time() - float((out / "killed_at").read_text())


def _latest(ckpt):
    names = sorted(n for n in os.listdir(ckpt) if n.startswith("ckpt-"))
    assert names, f"no checkpoint in {ckpt}"
    return read_checkpoint(os.path.join(ckpt, names[-1]))


@pytest.mark.parametrize("optimizer", ["adam"])   # momentum: graph tests
def test_bsp_resume_after_kill_equals_uninterrupted(tmp_path, two_ranks,
                                                    optimizer):
    reference = two_ranks[f"whole-{optimizer}"]
    ckpt = tmp_path / "ckpt"
    proc, _, killed = _run(tmp_path / "b", 2, "--optimizer", optimizer,
                           "--ckpt", ckpt, "--kill", "2:3", check=False)
    assert proc.returncode != 0
    assert _seconds_since_kill(killed) < KILL_LIMIT
    meta, shared, locals_ = _latest(ckpt)
    assert meta["epoch"] == 2 and meta["ranks"] == 2
    # BSP on gradients keeps ranks equal: the model is stored once
    assert not any(k.startswith("model/") for k in locals_.get(0, {}))
    assert meta["step"] == 2 * 6                # 48 samples / 8 per batch
    assert "model/0" in shared and "optimizer/0" in shared
    _, _, out = _run(tmp_path / "c", 2, "--optimizer", optimizer,
                     "--ckpt", ckpt)
    resumed = _results(out, 2)
    assert resumed[0]["start"] == 2
    assert resumed[0]["step"] == reference[0]["step"] == 4 * 6
    for rank in range(2):
        for a, b in zip(resumed[rank]["weights"], reference[0]["weights"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(resumed[rank]["optimizer"], reference[0]["optimizer"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bsp_resumes_on_other_rank_count_with_a_warning(two_ranks,
                                                        three_ranks):
    assert two_ranks["bsp-for-3"][0]["start"] == 0
    results = three_ranks["bsp-on-3"]
    warned = " ".join(results[0]["warnings"])        # rank 0 warns
    assert "resuming a checkpoint written by 2 ranks on 3" in warned, warned
    assert "scale the learning rate" in warned, warned
    assert results[0]["start"] == 2
    for r in results[1:]:
        for a, b in zip(r["weights"], results[0]["weights"]):
            np.testing.assert_array_equal(a, b)


# BSP on gradients: test_bsp_resume_after_kill_equals_uninterrupted
RULES = [
    ("bsp", '{"mode": "params", "every": 2}', 2),
    ("easgd", '{"tau": 2, "synchronous": true}', 2),
    ("easgd", '{"tau": 2}', 3),
    ("gosgd", '{"p": 0.5, "seed": 3}', 2),
]


@pytest.mark.parametrize("rule,options,ranks", RULES,
                         ids=["bsp-params", "easgd-sync",
                              "easgd-async", "gosgd"])
def test_kill_one_rank_ends_job_and_checkpoint_resumes(tmp_path, rule,
                                                       options, ranks):
    ckpt = tmp_path / "ckpt"
    common = ("--rule", rule, "--options", options, "--ckpt", ckpt,
              "--n", str(48 * ranks))
    proc, _, killed = _run(tmp_path / "a", ranks, *common, "--kill", "2:3",
                           "--fault-rank", ranks - 1, check=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert _seconds_since_kill(killed) < KILL_LIMIT
    meta, shared, locals_ = _latest(ckpt)
    assert meta["rule"]["rule"] == rule
    # Asynchronous EASGD counts epochs in exchanges served (the workers'
    # average), and the surviving worker may run ahead of the killed one.
    assert 1 <= meta["epoch"] <= (3 if meta.get("center_only") else 2)
    if meta.get("center_only"):
        assert "center/0" in shared
    else:                    # ranks differ: every rank's model is stored
        assert sorted(locals_) == list(range(ranks))
        assert all("model/0" in locals_[r] for r in range(ranks))
    _, _, out = _run(tmp_path / "b", ranks, *common)
    results = _results(out, ranks)
    assert results[0]["start"] == meta["epoch"]
    for r in results:
        for a, b in zip(r["weights"], results[0]["weights"]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
            assert np.all(np.isfinite(a))


def test_gosgd_checkpoint_keeps_total_weight(three_ranks, checkpoints):
    assert len(three_ranks["gosgd-weight"]) == 3
    ckpt = checkpoints / "gosgd-weight"
    for name in sorted(os.listdir(ckpt)):
        _, _, locals_ = read_checkpoint(os.path.join(ckpt, name))
        weights = []
        for r in range(3):
            plain = json.loads(locals_[r]["rule/json"].tobytes().decode())
            weights.append(plain["weight"])
        assert sum(weights) == pytest.approx(1.0, abs=1e-12), weights
        assert len(set(weights)) > 1 or name.endswith("1.npz")


@pytest.mark.parametrize("rule,options", [
    ("bsp", "{}"), ("gosgd", '{"p": 0.5, "seed": 1}')])
def test_sigint_to_launcher_stops_every_rank_with_one_checkpoint(
        tmp_path, rule, options):
    out = tmp_path / "out"
    out.mkdir()
    ckpt = tmp_path / "ckpt"
    proc = run_mpi_interrupted(
        "keras_ckpt.py", 2, out / "marker", "--out", out, "--rule", rule,
        "--options", options, "--ckpt", ckpt, "--epochs", 50, "--every",
        1000, "--keep", 10, "--mark", "1:2", "--slow", 0.02, "--shorthand")
    stderr = proc.stderr
    assert proc.returncode != 0
    for rank in (0, 1):
        assert (out / f"rank{rank}.err").read_text().startswith(
            "Interrupted: interrupted by signal"), stderr[-3000:]
    names = sorted(os.listdir(ckpt))
    assert len(names) == 1, names
    meta, _, _ = read_checkpoint(os.path.join(ckpt, names[0]))
    assert meta["interrupted"] is True
    assert meta["epoch"] >= 1 and meta["batches_into_epoch"] >= 1
    assert not (out / "rank0.json").exists()


def test_exception_on_one_rank_keeps_the_last_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc, elapsed, _ = _run(tmp_path / "a", 2, "--ckpt", ckpt,
                            "--raise", "1:2", check=False)
    assert proc.returncode != 0
    assert "injected failure on rank 1 at (1, 2)" in proc.stderr
    meta, _, _ = _latest(ckpt)
    assert meta["epoch"] == 1 and meta["interrupted"] is False


def test_resume_with_other_rule_options_is_refused(tmp_path, two_ranks,
                                                   checkpoints):
    assert two_ranks["bsp-for-options"][0]["start"] == 0
    ckpt = checkpoints / "bsp-for-options"
    proc, _, _ = _run(tmp_path / "b", 2, "--ckpt", ckpt, "--options",
                      '{"mode": "params"}', check=False)
    assert proc.returncode != 0
    for rank in (0, 1):
        text = (tmp_path / "b" / "out" / f"rank{rank}.err").read_text()
        assert text.startswith("ResumeError") and \
            "was written with rule options" in text and "'mode'" in text, text


def test_recorded_run_resumes_its_records(tmp_path):
    ckpt, record = tmp_path / "ckpt", tmp_path / "record"
    common = ("--ckpt", ckpt, "--record", record)
    proc, _, _ = _run(tmp_path / "a", 2, *common, "--kill", "2:3",
                      check=False)
    assert proc.returncode != 0
    _run(tmp_path / "b", 2, *common)
    for rank in range(2):
        lines = (record / f"rank{rank}.jsonl").read_text().splitlines()
        steps = [json.loads(line)["step"] for line in lines]
        # 4 epochs of 6 steps, each once: the killed run's steps after the
        # epoch-2 checkpoint are dropped and trained again
        assert steps == list(range(24)), steps
        epochs = [json.loads(line)["epoch"] for line in lines]
        assert epochs == [e for e in range(4) for _ in range(6)]


def test_gosgd_checkpoint_refuses_another_rank_count(tmp_path, two_ranks,
                                                     checkpoints):
    assert two_ranks["gosgd-for-3"][0]["start"] == 0
    ckpt = checkpoints / "gosgd-for-3"
    proc, _, _ = _run(tmp_path / "b", 3, *GOSGD_FOR_3, "--ckpt", ckpt,
                      "--n", "144", check=False)
    assert proc.returncode != 0
    message = "was written by 2 ranks; GoSGD resumes only on as many ranks"
    for rank in range(3):
        text = (tmp_path / "b" / "out" / f"rank{rank}.err").read_text()
        assert text.startswith("ResumeError") and message in text, text
