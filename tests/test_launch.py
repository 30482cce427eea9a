"""Launching ranks from Python (tmpi_core.launch) and tmpi-run."""

import os
import signal
import subprocess
import sys
import time

import pytest

from launch_targets import fail_on, sum_of_ranks, wait_forever
from mpirun import HERE, ROOT
from tmpi_core.launch import LaunchError, launch

ENV = {"PYTHONPATH": os.pathsep.join([ROOT, HERE])}


def test_launch_returns_rank_zeros_result_and_streams_its_output(capsys):
    result = launch(sum_of_ranks, 2.0, ranks=3, env=ENV, timeout=120)
    assert result == {"size": 3, "sum": 2.0 * (0 + 1 + 2), "rank": 0}
    out = capsys.readouterr().out
    assert "hello from rank 0" in out
    assert "hello from rank 1" not in out       # the others only on failure


def test_a_failing_rank_raises_with_its_traceback(capsys):
    with pytest.raises(LaunchError) as info:
        launch(fail_on, 1, ranks=2, env=ENV, timeout=120)
    error = info.value
    assert error.returncode != 0
    assert "injected failure on rank 1" in str(error)
    assert "--- rank 1" in str(error)
    assert any("RuntimeError" in line for line in error.output[1])


def test_a_script_runs_with_its_arguments(tmp_path):
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('args', sys.argv[1:])\n")
    assert launch(str(script), "a", 3, ranks=2, timeout=120) is None


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="cannot be imported by the ranks"):
        launch(lambda: 1, ranks=2)
    with pytest.raises(ValueError, match="ranks=0 must be"):
        launch(sum_of_ranks, ranks=0)
    with pytest.raises(ValueError, match="no such script"):
        launch("no/such/script.py", ranks=2)


def test_ctrl_c_ends_every_rank(tmp_path):
    code = ("import sys\nfrom tmpi_core.launch import launch\n"
            "from launch_targets import wait_forever\n"
            f"launch(wait_forever, {str(tmp_path)!r}, ranks=2)\n")
    env = dict(os.environ, PYTHONPATH=ENV["PYTHONPATH"])
    caller = subprocess.Popen([sys.executable, "-c", code], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2:
        assert caller.poll() is None, caller.communicate()
        assert time.monotonic() < deadline, "the ranks never started"
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    caller.send_signal(signal.SIGINT)           # Ctrl-C in the notebook
    _, err = caller.communicate(timeout=60)
    assert "KeyboardInterrupt" in err, err
    time.sleep(0.5)
    alive = [pid for pid in pids if _alive(pid)]
    assert alive == [], f"ranks {alive} outlived Ctrl-C"


def _alive(pid):
    # a zombie (ended, not yet reaped by its new parent) counts as ended
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_tmpi_run_gives_each_rank_its_gpu_and_threads():
    # an MPI program, as a training script is (MPI_Finalize waits for the
    # launcher to take every rank's output)
    show = ("from mpi4py import MPI; import os, sys; e = os.environ; "
            "sys.stdout.write('rank %s gpu %s threads %s\\n' % ("
            "e['MPI_LOCALRANKID'], e.get('CUDA_VISIBLE_DEVICES'), "
            "e.get('OMP_NUM_THREADS')))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "TMPI_NUM_THREADS")}
    env.update(CUDA_VISIBLE_DEVICES="5,7", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "tmpi_core.launch", "-n", "2", sys.executable,
         "-c", show], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // 2)
    lines = sorted(proc.stdout.split("\n"))
    assert f"rank 0 gpu 5 threads {threads}" in lines, proc.stdout
    assert f"rank 1 gpu 7 threads {threads}" in lines, proc.stdout
    # the user's own choice wins
    env["OMP_NUM_THREADS"] = "3"
    proc = subprocess.run(
        [sys.executable, "-m", "tmpi_core.launch", "-n", "2", sys.executable,
         "-c", show], env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("threads 3") == 2, proc.stdout
