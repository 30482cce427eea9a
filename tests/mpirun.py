"""Run a script on real MPI ranks from pytest, with a timeout.

A hang fails the test (``subprocess.TimeoutExpired`` is turned into an
assertion) instead of stalling CI.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPTS = os.path.join(HERE, "mpi")

__all__ = ["fit_each_config", "mpiexec", "note_errors_per_rank",
           "once_per_key", "read_rank_json", "run_mpi", "run_mpi_configs",
           "run_mpi_interrupted", "run_mpi_json", "ROOT", "SCRIPTS"]


def note_errors_per_rank(out_dir, rank):
    """In an MPI test script: note an uncaught error in ``out_dir/rank{r}.err``
    (``Type: message``), then report it through the current hook (tmpi's).

    The ranks' stderr lines can interleave, so tests read these files.
    Install it after the last library that replaces ``sys.excepthook``.
    """
    previous = sys.excepthook

    def _note_and_raise(exc_type, exc, tb):
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(f"{exc_type.__name__}: {exc}")
        previous(exc_type, exc, tb)

    sys.excepthook = _note_and_raise


def fit_each_config(parser, fit, rank):
    """In an MPI test script: ``fit(parser.parse_args())``, or, with
    ``--configs JSON`` (added here; ``{name: [options...]}``), ``fit`` once
    per configuration in turn, each with ``--out DIR/name`` and its own
    options on the parser's defaults (:func:`run_mpi_configs` launches so).

    Args:
        parser: the script's ``argparse.ArgumentParser``, with ``--out``.
        fit: ``fit(args)`` runs one configuration and writes its results
            under ``args.out``.
        rank: a callable that returns this process's rank; rank 0 prints
            each configuration's name as it starts, so that a failure's
            output names the configuration it happened in.
    """
    parser.add_argument(
        "--configs", default=None, metavar="JSON",
        help='{"NAME": [options...], ...}: run each configuration in turn '
             "in this one job; its results go to DIR/NAME. The other "
             "options are then ignored.")
    # --out and --configs alone first: a configuration supplies the
    # script's required options
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--out")
    first.add_argument("--configs")
    known, _ = first.parse_known_args()
    if known.configs is None:
        fit(parser.parse_args())
        return
    for name, options in json.loads(known.configs).items():
        out = os.path.join(known.out, name)
        os.makedirs(out, exist_ok=True)
        if rank() == 0:
            print(f"configuration {name}: {' '.join(options)}", flush=True)
        fit(parser.parse_args(["--out", out, *map(str, options)]))


def mpiexec():
    """The ``mpiexec`` next to this interpreter (the venv's), else on PATH."""
    from tmpi_core.launch import find_mpiexec

    try:
        return find_mpiexec()
    except ValueError:
        raise RuntimeError(
            "no mpiexec found; the test command installs one (pip install "
            "mpich) - run the tests with `make test`") from None


def _command(script, n, args, env, mpiexec_args=()):
    path = script if os.path.isabs(script) else os.path.join(SCRIPTS, script)
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [ROOT, HERE, full_env.get("PYTHONPATH", "")])
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = str(value)
    cmd = [mpiexec(), *map(str, mpiexec_args), "-n", str(n), sys.executable,
           path, *map(str, args)]
    return cmd, full_env


def run_mpi(script, n, *args, timeout=180, env=None, check=True,
            mpiexec_args=()):
    """Run ``script`` (a path, or a name under tests/mpi) on ``n`` ranks.

    Args:
        script: file name under ``tests/mpi`` or a path.
        n: number of ranks.
        *args: command-line arguments for the script.
        timeout: seconds before the run counts as hung.
        env: extra environment variables (``None`` removes one).
        check: assert a zero exit status.
        mpiexec_args: extra ``mpiexec`` arguments before ``-n`` (rank
            placement, as ``tests/hosts.py`` gives).

    Returns:
        subprocess.CompletedProcess with ``stdout`` and ``stderr`` as text.
    """
    cmd, full_env = _command(script, n, args, env, mpiexec_args)
    # A session of its own, so that a hung job is killed whole: killing only
    # mpiexec would leave its ranks spinning in MPI for the rest of the run.
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=full_env,
                             cwd=ROOT, start_new_session=True)
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(popen)
        out, err = popen.communicate()
        raise AssertionError(
            f"{' '.join(cmd)} hung for more than {timeout}s\n"
            f"stdout:\n{_text(out)}\nstderr:\n{_text(err)}") from None
    except BaseException:
        _kill_group(popen)
        popen.wait()
        raise
    proc = subprocess.CompletedProcess(cmd, popen.returncode, out, err)
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def _kill_group(popen):
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_mpi_interrupted(script, n, marker, *args, wait=90, timeout=60,
                        mpiexec_args=()):
    """Run ``script`` on ``n`` ranks and send SIGINT to the launcher (Ctrl-C)
    once the file ``marker`` exists (``mpiexec_args`` as for ``run_mpi``).

    Returns:
        subprocess.CompletedProcess with the launcher's exit status and
        output, after it ended on the signal.
    """
    cmd, full_env = _command(script, n, args, None, mpiexec_args)
    proc = subprocess.Popen(cmd, env=full_env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + wait
        while not os.path.exists(marker):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"{marker} never appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def run_mpi_json(script, n, tmp_path, *args, **kwargs):
    """Run a script that writes one JSON result per rank to ``--out DIR``.

    Returns:
        list of the ranks' results, in rank order.
    """
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    run_mpi(script, n, "--out", out, *args, **kwargs)
    return read_rank_json(out, n)


def run_mpi_configs(script, n, out, configs, **kwargs):
    """Run a script once for several configurations: one launch, so the
    ranks pay their start-up (imports, MPI) once instead of per test.

    The script takes ``--out DIR --configs JSON`` (``{name: [options...]}``),
    runs the configurations in turn and writes ``DIR/name/rank{r}.json``
    for each. Tests share the result through a module-scoped fixture and
    each checks its own configuration.

    Args:
        script, n: as for :func:`run_mpi`.
        out: a directory (``pathlib.Path``) for the results.
        configs: dict of configuration name to its command-line options.
        **kwargs: as for :func:`run_mpi`; the ``timeout`` covers the whole
            run.

    Returns:
        dict of configuration name to the ranks' results, in rank order.
    """
    out.mkdir(parents=True, exist_ok=True)
    configs = {name: [str(v) for v in options]
               for name, options in configs.items()}
    run_mpi(script, n, "--out", out, "--configs", json.dumps(configs),
            **kwargs)
    return {name: read_rank_json(out / name, n) for name in configs}


def once_per_key(launch):
    """``get(*key)``: ``launch(*key)``, run once per distinct key (for a
    module-scoped fixture whose tests share launches, as with
    :func:`run_mpi_configs`).

    A launch that failed fails every later test that asks for it with the
    same message, without launching again.
    """
    results, failures = {}, {}

    def get(*key):
        if key in failures:
            raise AssertionError(
                f"shared launch {key!r} failed (for an earlier test):\n"
                f"{failures[key]}")
        if key not in results:
            try:
                results[key] = launch(*key)
            except AssertionError as e:
                failures[key] = str(e)
                raise
        return results[key]

    return get


def read_rank_json(out, n):
    """The ``out/rank{r}.json`` results of ranks 0..n-1, in rank order."""
    results = []
    for rank in range(n):
        with open(out / f"rank{rank}.json") as f:
            results.append(json.load(f))
    return results


def _text(data):
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
