"""Start MPI ranks from Python: :func:`launch`, and the ``tmpi-run`` command.

:func:`launch` runs a function (or a script) on several ranks from a
running Python process or a notebook, under the environment's own
``mpiexec``: no MPI in the calling process, so a notebook kernel stays
usable. MPI's dynamic process spawn would need the caller to be an MPI
process and is not offered by every launcher (Slurm's ``srun`` among
them), so tmpi does not use it.

``tmpi-run`` is a thin layer over ``mpiexec``: the same arguments, and each
rank gets its share of the host's cores (threads) and, where there are
GPUs, the GPU of its local rank (``CUDA_VISIBLE_DEVICES``), unless the user
set either.
"""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

__all__ = ["LaunchError", "find_mpiexec", "launch", "main"]

#: Seconds ranks get to end after Ctrl-C before they are killed.
INTERRUPT_GRACE_S = 10.0


class LaunchError(RuntimeError):
    """The launched job failed.

    Attributes:
        returncode: the launcher's exit status.
        output: every rank's output lines, ``{rank: [line, ...]}`` (rank
            0's with the launcher's own messages).
    """

    def __init__(self, message, returncode, output):
        super().__init__(message)
        self.returncode = returncode
        self.output = output


def launch(target, *args, ranks=2, kwargs=None, env=None, mpiexec=None,
           mpiexec_args=(), timeout=None, echo=True):
    """Run ``target`` on ``ranks`` MPI ranks and return rank 0's result.

    Args:
        target: a function importable by name (defined in a module, not in
            a notebook cell: the ranks import it), called on every rank as
            ``target(*args, **kwargs)``; or the path of a Python script,
            run with ``args`` as its command line.
        *args: the function's arguments (picklable) or the script's.
        ranks: how many ranks (``>= 1``).
        kwargs: the function's keyword arguments.
        env: extra environment variables for the ranks.
        mpiexec: the launcher (default: the ``mpiexec`` next to this
            Python, else on ``PATH``).
        mpiexec_args: more launcher arguments (``["-hosts", "a,b"]``).
        timeout: seconds before the job is ended as hung (None: no limit).
        echo: print rank 0's output as it comes (the other ranks' only if
            the job fails).

    Returns:
        rank 0's return value (a function), or None (a script).

    Raises:
        ValueError: for a bad argument or a target the ranks cannot import.
        LaunchError: when the job fails (a rank raised, was killed or timed
            out), with the failing ranks' output in its message.
        KeyboardInterrupt: after Ctrl-C, once every rank has ended (each got
            SIGINT first, then SIGKILL after ``INTERRUPT_GRACE_S``).

    Example:
        >>> from mytraining import train
        >>> history = launch(train, epochs=3, ranks=2)     # in a notebook
    """
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"ranks={ranks!r} must be an integer >= 1")
    if timeout is not None and not (isinstance(timeout, (int, float))
                                    and timeout > 0):
        raise ValueError(f"timeout={timeout!r} must be seconds > 0 or None")
    launcher = mpiexec or find_mpiexec()
    workdir = tempfile.mkdtemp(prefix="tmpi-launch-")
    try:
        command = _rank_command(target, args, kwargs, workdir)
        cmd = [launcher, *map(str, mpiexec_args), "-n", str(ranks),
               *command]
        full_env = dict(os.environ)
        full_env.update({k: str(v) for k, v in (env or {}).items()})
        returncode, output = _run(cmd, full_env, timeout, echo)
        for rank in range(1, ranks):
            log = os.path.join(workdir, f"rank{rank}.log")
            if os.path.exists(log):
                with open(log, errors="replace") as f:
                    output[rank] = f.read().splitlines()
        if returncode != 0:
            raise LaunchError(_failure(returncode, output), returncode,
                              output)
        result = os.path.join(workdir, "result.pickle")
        if callable(target) and os.path.exists(result):
            with open(result, "rb") as f:
                return pickle.load(f)
        return None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def find_mpiexec():
    """The ``mpiexec`` next to this Python (a virtual environment's, from
    the ``mpich`` wheel), else the one on ``PATH``.

    Raises:
        ValueError: when there is none.
    """
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(local):
        return local
    found = shutil.which("mpiexec")
    if found is None:
        raise ValueError("no mpiexec found: pip install mpich (or load your "
                         "site's MPI), or pass mpiexec=")
    return found


def _rank_command(target, args, kwargs, workdir):
    if callable(target):
        module = getattr(target, "__module__", None)
        name = getattr(target, "__qualname__", "")
        if module in (None, "__main__") or "<locals>" in name \
                or "<lambda>" in name:
            raise ValueError(
                f"{target!r} cannot be imported by the ranks: define it in "
                "a module (a .py file on the path) and import it from there")
        with open(os.path.join(workdir, "call.pickle"), "wb") as f:
            pickle.dump({"module": module, "name": name, "args": args,
                         "kwargs": kwargs or {}}, f)
        return [sys.executable, "-m", "tmpi_core._launched", workdir, "call"]
    if isinstance(target, (str, os.PathLike)):
        path = os.fspath(target)
        if not os.path.exists(path):
            raise ValueError(f"target={path!r}: no such script")
        if kwargs:
            raise ValueError("kwargs= is for functions; a script takes args")
        return [sys.executable, "-m", "tmpi_core._launched", workdir,
                "script", os.path.abspath(path), *map(str, args)]
    raise ValueError(f"target={target!r} must be a function or a script path")


def _run(cmd, env, timeout, echo):
    """Run the launcher; stream rank 0's lines; return (status, output)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, bufsize=1)
    output = {0: []}

    def read():
        # rank 0's output and the launcher's own; the other ranks write
        # theirs to files (see tmpi_core._launched)
        for line in proc.stdout:
            output[0].append(line.rstrip("\n"))
            if echo:
                print(line, end="", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                _end(proc, grace=1.0)
                reader.join(timeout=5)
                output[0].append(f"tmpi: the job ran past timeout={timeout} "
                                 "s and was ended")
                return 124, output
            time.sleep(0.05)
    except BaseException:
        # Ctrl-C (or any error here): every rank ends before we go on
        _end(proc, grace=INTERRUPT_GRACE_S)
        reader.join(timeout=5)
        raise
    reader.join(timeout=5)
    return proc.returncode, output


def _end(proc, grace):
    """SIGINT to the launcher (it forwards it to every rank), then SIGKILL
    to the whole process group after ``grace`` seconds."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _failure(returncode, output, last=40):
    parts = [f"the job failed (launcher exit status {returncode})"]
    for rank in sorted(output):
        lines = output[rank][-last:]
        if lines:
            who = "rank 0 and the launcher" if rank == 0 else f"rank {rank}"
            parts.append(f"--- {who}, last {len(lines)} lines:")
            parts.extend(lines)
    return "\n".join(parts)


# -- tmpi-run ----------------------------------------------------------------

def main(argv=None):
    """``tmpi-run [mpiexec options] program [args]``: ``mpiexec`` with each
    rank's threads and GPU set (see the module docstring). Returns the
    launcher's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: tmpi-run [mpiexec options] PROGRAM [ARGS...]\n\n"
              "Runs mpiexec with the same options; each rank gets cores / "
              "ranks-on-host threads\nand the GPU of its local rank "
              "(CUDA_VISIBLE_DEVICES) unless you set them.\n"
              "Example: tmpi-run -n 4 python train.py")
        return 0
    program = _program_start(argv)
    if program is None:
        print("tmpi-run: no program to run; example: tmpi-run -n 4 python "
              "train.py", file=sys.stderr)
        return 2
    launcher = find_mpiexec()
    cmd = [launcher, *argv[:program], sys.executable, "-m",
           "tmpi_core._rank_env", *argv[program:]]
    proc = subprocess.Popen(cmd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)     # forwarded to every rank


#: mpiexec options that take a value (MPICH's hydra and Open MPI).
_VALUED = {"-n", "-np", "-ppn", "-hosts", "-host", "-f", "-hostfile",
           "-machinefile", "-genv", "-env", "-wdir", "-iface", "-launcher",
           "-launcher-exec", "-bind-to", "-map-by", "--hostfile", "--host",
           "--map-by", "--bind-to", "-x", "-npernode", "--npernode", "-N"}
_TWO_VALUES = {"-genv", "-env"}


def _program_start(argv):
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            return i
        if arg in _TWO_VALUES:
            i += 3
        elif arg in _VALUED:
            i += 2
        else:
            i += 1
    return None


if __name__ == "__main__":      # pragma: no cover
    sys.exit(main())
