"""The recorder (tmpi_core.recorder): calc / comm / wait per rank and step;
reading and summarising runs (tmpi_core.runs); tmpi-report."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mpirun import ROOT, once_per_key, run_mpi, run_mpi_configs
from tmpi_core import BSP, Recorder, make_recorder, make_rule, read_run
from tmpi_core import recorder as recorder_module
from tmpi_core import runs as runs_module

PNG = b"\x89PNG\r\n\x1a\n"


def lines_of(run_dir, rank):
    with open(os.path.join(run_dir, f"rank{rank}.jsonl")) as f:
        return [json.loads(line) for line in f]


def summary_of(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def assert_summary_sums_lines(run_dir, ranks):
    summary = summary_of(run_dir)
    assert summary["ranks"] == ranks
    for rank in range(ranks):
        lines = lines_of(run_dir, rank)
        mine = summary["per_rank"][rank]
        assert mine["steps"] == len(lines)
        for part in ("calc", "comm", "wait"):
            values = [line[part] for line in lines]
            assert mine["total"][part] == pytest.approx(sum(values),
                                                        rel=1e-12, abs=1e-15)
            if lines:
                assert mine["median"][part] == pytest.approx(np.median(values))
    for part in ("calc", "comm", "wait"):
        assert summary["total"][part] == pytest.approx(
            sum(r["total"][part] for r in summary["per_rank"]), rel=1e-12)
    return summary


# -- in one process -------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"run_dir": 3}, "run_dir=3 must be a directory path"),
    ({"run_dir": ""}, "run_dir='' must be a directory path"),
    ({"flush_every": 0}, "flush_every=0 must be an integer >= 1"),
    ({"measure_wait": "yes"}, "measure_wait='yes' must be True or False"),
    ({"samples_per_step": 0}, "samples_per_step=0 must be None or an integer"),
    ({"verbose": 1}, "verbose=1 must be True or False"),
])
def test_bad_options_name_the_culprit(tmp_path, kwargs, match):
    kwargs.setdefault("run_dir", tmp_path / "run")
    with pytest.raises(ValueError, match=match):
        Recorder(kwargs.pop("run_dir"), **kwargs)


def test_make_recorder_takes_a_path_or_a_recorder(tmp_path):
    rec = make_recorder(tmp_path / "a")
    assert isinstance(rec, Recorder) and rec.run_dir == str(tmp_path / "a")
    assert make_recorder(rec) is rec
    with pytest.raises(ValueError, match="record=3 must be a run directory"):
        make_recorder(3)


def test_no_recorder_means_one_shared_no_op_timer():
    rule = BSP()
    assert rule.recorder is None
    # the same object every time: nothing is allocated per exchange
    assert rule._timer("collective") is rule._timer("exchange")
    with rule._timer("blocked"):
        pass


def test_one_rank_records_sums_and_reopens(tmp_path):
    run = tmp_path / "run"
    rule = make_rule("bsp", mode="params", every=2)
    rule.recorder = Recorder(run, flush_every=3, verbose=False)
    with pytest.raises(RuntimeError, match="not open"):
        rule.recorder.end_step(loss=1.0)
    x = rule.start([np.zeros(3, np.float32)])
    assert rule.recorder.is_open
    for step in range(5):
        rule.recorder.begin_step()
        new = rule.end_step(x if rule.wants_params() else None)
        rule.recorder.end_step(loss=10.0 - step, epoch=0, samples=2,
                               accuracy=np.float32(0.5))
    with pytest.raises(ValueError, match="metric 'time' clashes"):
        rule.recorder.end_step(time=1.0)
    with pytest.raises(ValueError, match="metric accuracy=.* is not a scalar"):
        rule.recorder.end_step(accuracy=[1, 2])
    summary = rule.recorder.close()
    assert new is None and not rule.recorder.is_open
    assert rule.recorder.close() is summary            # nothing new: no-op
    lines = lines_of(run, 0)
    assert [line["step"] for line in lines] == list(range(5))
    assert [line["loss"] for line in lines] == [10.0, 9.0, 8.0, 7.0, 6.0]
    assert all(line["accuracy"] == 0.5 and line["samples"] == 2
               for line in lines)
    # steps 1 and 3 averaged parameters (every=2): comm only there
    assert [line["comm"] > 0 for line in lines] == [False, True, False,
                                                    True, False]
    summary = assert_summary_sums_lines(run, 1)
    assert summary["samples"] == 10
    assert summary["config"]["every"] == 2
    with open(run / "meta.json") as f:
        meta = json.load(f)
    assert meta["ranks"] == 1 and meta["config"]["rule"] == "bsp"
    # a second fit appends: start reopens the file, steps count on
    rule.start(x)
    rule.recorder.end_step(loss=1.0)
    rule.recorder.close()
    assert [line["step"] for line in lines_of(run, 0)] == list(range(6))
    assert summary_of(run)["per_rank"][0]["steps"] == 6


def test_reading_runs_lives_in_runs_and_the_old_names_warn(tmp_path):
    run = tmp_path / "run"
    rule = make_rule("bsp")
    rule.recorder = Recorder(run, verbose=False)
    rule.start([np.zeros(2, np.float32)])
    rule.recorder.end_step(loss=2.0)
    summary = rule.recorder.close()
    assert read_run is runs_module.read_run
    assert runs_module.read_run(run)["summary"] == summary
    assert runs_module.summary_text(summary).startswith("tmpi: 1 of 1 ranks")
    # the names that moved out of the recorder still resolve there, warned
    for name in ("read_run", "summary_text"):
        with pytest.warns(DeprecationWarning,
                          match=f"recorder.{name} moved to tmpi_core.runs"):
            assert getattr(recorder_module, name) is getattr(runs_module, name)
    with pytest.raises(AttributeError, match="no attribute 'read_lines'"):
        recorder_module.read_lines


def test_unwritable_run_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rule = make_rule("bsp")
    rule.recorder = Recorder(blocker / "run")
    with pytest.raises(OSError, match="cannot create the run directory"):
        rule.start([np.zeros(2, np.float32)])


# -- on real ranks ------------------------------------------------------------

SLEEP = 0.15
SLOW_STEPS = 4
GOSGD = ("--rule", "gosgd", "--options", json.dumps({"p": 1.0, "seed": 3}),
         "--steps", 6)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """``recorded(name, *args)``: the run directory ``.../name`` of
    recorder_core.py on 2 ranks with ``args``, launched once per module for
    each distinct call (the report test draws the runs other tests check)."""
    runs = {}

    def record(name, *args):
        key = (name, *map(str, args))
        if key not in runs:
            run = tmp_path_factory.mktemp("recorded") / name
            run_mpi("recorder_core.py", 2, "--run-dir", run, *args)
            runs[key] = run
        return runs[key]

    return record


def slow_rank_run(recorded, rule, options):
    return recorded(rule, "--rule", rule, "--options", json.dumps(options),
                    "--steps", SLOW_STEPS, "--sleep", SLEEP)


@pytest.mark.parametrize("rule,options", [
    ("bsp", {}),
    ("bsp", {"mode": "params"}),
    ("easgd", {"synchronous": True}),
])
def test_a_slow_rank_makes_the_others_wait(recorded, rule, options):
    run = slow_rank_run(recorded, rule, options)
    steps = SLOW_STEPS
    fast, slow = lines_of(run, 0), lines_of(run, 1)
    assert len(fast) == len(slow) == steps
    # (BSP on gradients checks the gradients' shapes across ranks at its
    # first exchange, before the barrier: rank 0 waits there on step 0)
    for line in fast[1:]:
        assert line["wait"] >= 0.8 * SLEEP, line
    for line in fast:
        assert line["comm"] > 0 and line["calc"] >= 0
    for line in slow:
        assert line["calc"] >= SLEEP, line     # its sleep is its compute
        assert line["comm"] > 0 and line["wait"] >= 0
    for rank, lines in enumerate((fast, slow)):
        assert [line["step"] for line in lines] == list(range(steps))
        assert [line["epoch"] for line in lines] == [s // 3
                                                     for s in range(steps)]
        np.testing.assert_allclose([line["loss"] for line in lines],
                                   [1 / (s + 1) + rank for s in range(steps)])
        assert [line["accuracy"] for line in lines] == [s / 100 for s
                                                        in range(steps)]
    summary = assert_summary_sums_lines(run, 2)
    assert summary["per_rank"][0]["total"]["wait"] >= \
        0.8 * SLEEP * (steps - 1)
    assert summary["samples"] == 2 * 4 * steps
    assert summary["config"]["rule"] == rule


def test_asynchronous_rules_count_blocking_as_wait(tmp_path, recorded):
    # EASGD (server/worker): the server trains not and records no step; the
    # worker's round trip with the server is wait, every tau=2 steps.
    easgd = tmp_path / "easgd"
    run_mpi("recorder_core.py", 2, "--run-dir", easgd, "--rule", "easgd",
            "--options", json.dumps({"tau": 2}), "--steps", 6)
    assert lines_of(easgd, 0) == []
    worker = lines_of(easgd, 1)
    assert [line["wait"] > 0 for line in worker] == [False, True] * 3
    assert all(line["comm"] >= 0 for line in worker)
    assert_summary_sums_lines(easgd, 2)
    # GoSGD never blocks on a peer; with p=1 it pushes every step.
    gosgd = recorded("gosgd", *GOSGD)
    for rank in (0, 1):
        lines = lines_of(gosgd, rank)
        assert len(lines) == 6
        assert all(line["wait"] == 0 and line["comm"] > 0 for line in lines)
    assert_summary_sums_lines(gosgd, 2)


def test_unwritable_run_dir_fails_every_rank_without_hanging(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_mpi("recorder_core.py", 2, "--run-dir", blocker / "run",
                   check=False, timeout=120)
    assert proc.returncode != 0
    assert "cannot create the run directory" in proc.stderr


KERAS_EPOCHS, KERAS_FITS = 2, 2


@pytest.fixture(scope="module")
def keras_recorded(tmp_path_factory):
    """keras_record.py's results and run directories on 2 ranks, one
    launch for both configurations: ``{name: (ranks' results, run)}``."""
    pytest.importorskip("keras", reason="the Keras adapter needs keras")
    runs = tmp_path_factory.mktemp("keras-runs")
    configs = {
        "bsp": ("--run-dir", runs / "bsp", "--n", 96, "--epochs",
                KERAS_EPOCHS, "--fits", KERAS_FITS),
        "easgd": ("--run-dir", runs / "easgd", "--epochs", 1, "--rule",
                  "easgd", "--options", json.dumps({"tau": 2})),
    }
    results = run_mpi_configs("keras_record.py", 2,
                              tmp_path_factory.mktemp("keras"), configs,
                              timeout=300)
    return {name: (results[name], runs / name) for name in configs}


def test_keras_fit_records_every_batch(keras_recorded):
    epochs, fits, steps = KERAS_EPOCHS, KERAS_FITS, 6   # 96 / 2 ranks / 8
    ranks, run = keras_recorded["bsp"]
    for rank, result in enumerate(ranks):
        lines = lines_of(run, rank)
        assert len(lines) == fits * epochs * steps
        assert [line["step"] for line in lines] == list(range(len(lines)))
        assert [line["epoch"] for line in lines] == \
            [e for _ in range(fits) for e in range(epochs)
             for _ in range(steps)]
        logged = [logs for fit in result["batch_logs"] for logs in fit]
        assert len(logged) == len(lines)
        for line, logs in zip(lines, logged):
            # exactly the loss and accuracy Keras reported for the batch
            assert line["loss"] == logs["loss"]
            assert line["accuracy"] == logs["accuracy"]
            assert line["comm"] > 0 and line["calc"] > 0
            assert line["wait"] >= 0
        # rank 0's summary came back from the callback, after the last fit
        assert result["summary"]["steps"] == [len(lines)] * 2
    assert_summary_sums_lines(run, 2)


def test_keras_asynchronous_easgd_records_the_worker(keras_recorded):
    ranks, run = keras_recorded["easgd"]
    # the server (rank 0) serves and trains not: no steps recorded there
    assert lines_of(run, 0) == []
    worker = lines_of(run, 1)
    assert len(worker) == 10
    assert [line["loss"] for line in worker] == \
        [logs["loss"] for logs in ranks[1]["batch_logs"][0]]
    assert [line["wait"] > 0 for line in worker] == [False, True] * 5
    assert_summary_sums_lines(run, 2)


GRAPH_STEPS = 6


@pytest.fixture(scope="module")
def graph_recorded(tmp_path_factory):
    """``graph_recorded(lib)``: graph_record.py's results and run
    directories on 2 ranks for both entries, one launch per library:
    ``{entry: (ranks' results, run)}``."""
    def launch(lib):
        runs = tmp_path_factory.mktemp(f"{lib}-runs")
        configs = {entry: ("--lib", lib, "--entry", entry, "--run-dir",
                           runs / entry, "--steps", GRAPH_STEPS)
                   for entry in ("updates", "grads")}
        results = run_mpi_configs("graph_record.py", 2,
                                  tmp_path_factory.mktemp(lib), configs,
                                  timeout=420)
        return {entry: (results[entry], runs / entry) for entry in configs}

    return once_per_key(launch)


@pytest.mark.parametrize("lib", ["theano", "pytensor"])
@pytest.mark.parametrize("entry", ["updates", "grads"])
def test_graph_adapters_record_each_call(graph_recorded, lib, entry):
    if lib == "theano":
        pytest.importorskip(
            "theano", reason="Theano is tested in .venv-theano (numpy < "
            "1.24); `make test` runs this file there too")
        pytest.importorskip("lasagne", reason="Lasagne comes with Theano")
    else:
        pytest.importorskip(
            "pytensor", reason="PyTensor is tested in .venv (numpy 2); "
            "`make test` runs this file there too")
    steps = GRAPH_STEPS
    ranks, run = graph_recorded(lib)[entry]
    for rank, result in enumerate(ranks):
        lines = lines_of(run, rank)
        assert len(lines) == steps
        assert [line["loss"] for line in lines] == result["losses"]
        assert all(line["comm"] > 0 and line["wait"] >= 0
                   and line["calc"] >= 0 for line in lines)
        if entry == "updates":
            assert all(line["samples"] == 8 and line["epoch"] == 0
                       for line in lines)
    assert_summary_sums_lines(run, 2)


def test_distributed_grads_wants_a_recorder_it_can_reach(tmp_path):
    pytensor = pytest.importorskip("pytensor", reason="PyTensor is in .venv")
    import tmpi_adapters.pytensor as tmpi_pytensor

    w = pytensor.shared(np.zeros(3), name="w")
    with pytest.raises(ValueError, match="hold the recorder yourself"):
        tmpi_pytensor.distributed_grads(
            [pytensor.tensor.grad((w ** 2).sum(), w)], record=str(tmp_path))
    updates = tmpi_pytensor.distributed([(w, w + 1)])
    with pytest.raises(ValueError, match="pass record=RUN_DIR to distributed"):
        updates.record(loss=1.0)


# -- tmpi-report --------------------------------------------------------------

def report_command():
    """The installed console script (``pip install -e .`` makes it)."""
    path = os.path.join(os.path.dirname(sys.executable), "tmpi-report")
    assert os.path.exists(path), (
        "tmpi-report is not installed in this environment; `make test` "
        "installs tmpi with pip install -e, which creates it")
    return path


def test_tmpi_report_plots_runs_side_by_side(tmp_path, recorded):
    pytest.importorskip("matplotlib", reason="tmpi-report needs matplotlib")
    runs = [slow_rank_run(recorded, "bsp", {}), recorded("gosgd", *GOSGD)]
    out = tmp_path / "plots"
    proc = subprocess.run([report_command(), *map(str, runs), "-o", str(out)],
                          capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for name in ("time_breakdown.png", "loss.png", "accuracy.png"):
        path = out / name
        assert f"wrote {path}" in proc.stdout
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    assert f"bsp: 2 ranks, {SLOW_STEPS} steps per rank" in proc.stdout
    assert "gosgd: 2 ranks, 6 steps per rank" in proc.stdout
    # one run: the plots go into its own directory
    proc = subprocess.run([sys.executable, "-m", "tmpi_core.report",
                           str(runs[0])], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert (runs[0] / "time_breakdown.png").read_bytes().startswith(PNG)
    run = read_run(runs[1])
    assert run["meta"]["ranks"] == 2 and len(run["ranks"][1]) == 6


def test_tmpi_report_fails_clearly_without_records(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([report_command(), str(empty)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert f"'{empty}' holds no records" in proc.stderr
    assert not (empty / "time_breakdown.png").exists()
    proc = subprocess.run([report_command(), str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr
