"""Checkpoint and resume through TMPISync, with real processes killed."""

import json
import os
import time

import numpy as np
import pytest

pytest.importorskip("keras", reason="the Keras adapter needs keras")

from mpirun import run_mpi, run_mpi_interrupted  # noqa: E402
from tmpi_core.checkpoint import read_checkpoint  # noqa: E402

KILL_LIMIT = 30          # the bound for a killed rank


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
def test_bsp_resume_after_kill_equals_uninterrupted(tmp_path, optimizer):
    whole, _, out = _run(tmp_path / "a", 2, "--optimizer", optimizer)
    reference = _results(out, 2)
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


def test_bsp_resumes_on_other_rank_count_with_a_warning(tmp_path):
    ckpt = tmp_path / "ckpt"
    _run(tmp_path / "a", 2, "--ckpt", ckpt, "--epochs", "2")
    proc, _, out = _run(tmp_path / "b", 3, "--ckpt", ckpt, "--epochs", "3",
                        "--n", "144")
    assert "resuming a checkpoint written by 2 ranks on 3" in proc.stderr
    assert "scale the learning rate" in proc.stderr
    results = _results(out, 3)
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


def test_gosgd_checkpoint_keeps_total_weight(tmp_path):
    ckpt = tmp_path / "ckpt"
    _run(tmp_path / "a", 3, "--rule", "gosgd", "--options",
         '{"p": 0.7, "seed": 5}', "--ckpt", ckpt, "--epochs", "2",
         "--n", "144", "--keep", "5")
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


def test_resume_with_other_rule_options_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    _run(tmp_path / "a", 2, "--ckpt", ckpt, "--epochs", "1")
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


def test_gosgd_checkpoint_refuses_another_rank_count(tmp_path):
    ckpt = tmp_path / "ckpt"
    common = ("--rule", "gosgd", "--options", '{"p": 0.5, "seed": 4}',
              "--ckpt", ckpt)
    _run(tmp_path / "a", 2, *common, "--epochs", "1")
    proc, _, _ = _run(tmp_path / "b", 3, *common, "--n", "144", check=False)
    assert proc.returncode != 0
    message = "was written by 2 ranks; GoSGD resumes only on as many ranks"
    for rank in range(3):
        text = (tmp_path / "b" / "out" / f"rank{rank}.err").read_text()
        assert text.startswith("ResumeError") and message in text, text
