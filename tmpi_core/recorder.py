"""Live timing of training: per rank and step, compute, exchange and waiting.

This module's one job is measuring while training runs: the
:class:`Recorder` that rules time their exchanges into and adapters mark
steps on, writing Theano-MPI's ``calc`` / ``comm`` / ``wait`` breakdown (and
the loss and metrics) as JSON lines to a run directory. The file format,
reading runs back (:func:`~tmpi_core.runs.read_run`) and summarising them
live in :mod:`tmpi_core.runs`; the plots in ``tmpi-report RUN_DIR``
(:mod:`tmpi_core.report`).

What each number means, per step of one rank (seconds):

* **wait** — time spent waiting for other ranks before an exchange. In
  synchronous rules (BSP, synchronous EASGD) the recorder times a
  ``comm.Barrier()`` just before the collective: the slowest rank passes it
  at once, the others wait there for it. Asynchronous EASGD: the worker's
  blocking send/receive round trip with the server (its queue behind other
  workers and the transfer itself; blocking point-to-point cannot tell them
  apart). GoSGD never blocks on a peer: 0.
* **comm** — the exchange itself: packing the fused buffer and the
  collective (the gossip drain/merge/push for GoSGD, the elastic arithmetic
  for asynchronous EASGD), minus any wait inside it.
* **calc** — the rest of the step: from the step's begin (the adapter marks
  it; else where the previous step ended, and for the first step its first
  exchange) to its end, minus comm and wait.

Cost: nothing when no recorder is attached to a rule (one ``is None`` test
per exchange). When recording: two clock reads per timed block, one JSON
line per step into a buffered file (flushed every ``flush_every`` steps),
and in synchronous rules one extra ``Barrier`` per exchange, a few
microseconds within a host, one network latency across hosts;
``measure_wait=False`` drops it (waiting then shows up inside comm).
"""

import atexit
import json
import numbers
import os
import sys
import tempfile
import time
import warnings

import numpy as np

from tmpi_core import runs as _runs
from tmpi_core._version import __version__
from tmpi_core.context import get_context

__all__ = ["Recorder", "make_recorder"]

# Names that lived here before reading runs moved to tmpi_core.runs.
_MOVED = frozenset(("read_run", "summary_text"))


class Recorder:
    """Record calc / comm / wait seconds and metrics per step, per rank.

    Each rank appends one JSON line per step to ``RUN_DIR/rank{r}.jsonl``::

        {"step": 0, "epoch": 0, "calc": 0.012, "comm": 0.003, "wait": 0.0004,
         "time": 1718000000.1, "samples": 64, "loss": 1.09, "accuracy": 0.41}

    (``time``: Unix time at the step's end; ``epoch``, ``samples`` and the
    metrics only when known). Rank 0 writes ``RUN_DIR/meta.json`` (rule
    configuration, ranks, start time) when recording starts and
    ``RUN_DIR/summary.json`` (per-rank totals and medians, samples/s) at
    :meth:`close`, and prints a one-paragraph summary. See the module
    docstring for how the times are measured and what that costs.

    Attach it to a rule before the rule starts (``rule.recorder = rec``) or
    let an adapter do it (``TMPISync(..., record=RUN_DIR)``,
    ``distributed(updates, record=RUN_DIR)``). The rule opens it in
    :meth:`~tmpi_core.Rule.start` and times its exchanges; the adapter marks
    each step with :meth:`begin_step` / :meth:`end_step` and closes it.

    Args:
        run_dir: directory for the records; rank 0 creates it. Best on a
            filesystem every rank sees, so ``tmpi-report`` finds every
            rank's file in one place (the summary is gathered over MPI and
            needs no shared filesystem).
        comm: an ``mpi4py.MPI.Comm``; default: the rule's communicator, or
            ``COMM_WORLD``.
        flush_every: write the buffered lines to disk every this many steps
            (and at :meth:`close`).
        measure_wait: time a barrier before each synchronous collective;
            False saves that barrier (wait is then 0 and included in comm).
        samples_per_step: samples one step of this rank trains on, for
            samples/s; :meth:`end_step` ``samples=`` overrides it per step.
        verbose: print the summary paragraph on rank 0 at :meth:`close`.

    Raises:
        ValueError: for a bad option.

    Example:
        >>> rule = make_rule("bsp")
        >>> rule.recorder = Recorder("runs/bsp")
        >>> params = rule.start(params)             # opens the recorder
        >>> for batch in data:
        ...     rule.recorder.begin_step()
        ...     grads = rule.on_gradients(compute_grads(params, batch))
        ...     apply_update(params, grads)
        ...     rule.end_step()
        ...     rule.recorder.end_step(loss=loss)
        >>> rule.recorder.close()                   # summary.json on rank 0
    """

    def __init__(self, run_dir, *, comm=None, flush_every=50,
                 measure_wait=True, samples_per_step=None, verbose=True):
        if not isinstance(run_dir, (str, os.PathLike)) or not os.fspath(run_dir):
            raise ValueError(
                f"run_dir={run_dir!r} must be a directory path (str or "
                "os.PathLike), e.g. 'runs/bsp'")
        if isinstance(flush_every, bool) or not isinstance(
                flush_every, numbers.Integral) or flush_every < 1:
            raise ValueError(f"flush_every={flush_every!r} must be an integer "
                             ">= 1 (steps between writes to disk)")
        if not isinstance(measure_wait, bool):
            raise ValueError(
                f"measure_wait={measure_wait!r} must be True or False")
        if samples_per_step is not None and (
                isinstance(samples_per_step, bool)
                or not isinstance(samples_per_step, numbers.Integral)
                or samples_per_step < 1):
            raise ValueError(f"samples_per_step={samples_per_step!r} must be "
                             "None or an integer >= 1")
        if not isinstance(verbose, bool):
            raise ValueError(f"verbose={verbose!r} must be True or False")
        self.run_dir = os.fspath(run_dir)
        self.flush_every = int(flush_every)
        self.measure_wait = measure_wait
        self.samples_per_step = samples_per_step
        self.verbose = verbose
        self.step = 0
        self._empty_pending = False
        self.path = None
        self.summary = None
        self._comm = comm
        self._config = None
        self._ctx = None
        self._file = None
        self._barrier = _not_opened
        self._comm_s = 0.0
        self._wait_s = 0.0
        self._begin = None
        self._last_end = None
        #: times an exchange into comm after a barrier timed into wait
        #: (synchronous collectives)
        self.collective = _ExchangeTimer(self, barrier=True)
        #: times an exchange into comm (asynchronous rules)
        self.exchange = _ExchangeTimer(self, barrier=False)
        #: times a block into wait (blocking sends/receives)
        self.blocked = _WaitTimer(self)

    @property
    def is_open(self):
        """True while this rank's record file is open."""
        return self._file is not None

    def open(self, ctx=None, *, config=None):
        """Create the run directory and open this rank's file.

        Collective the first time: rank 0 creates ``run_dir`` and writes
        ``meta.json``, the others wait for its verdict (a broadcast), then
        every rank opens ``rank{r}.jsonl`` (truncating an old one). After
        :meth:`close` it only reopens this rank's file for appending (no
        communication); while open it does nothing. Rules call it from
        :meth:`~tmpi_core.Rule.start`.

        Args:
            ctx: the :class:`~tmpi_core.Context` to record on (a rule passes
                its own); default ``get_context(comm)``.
            config: the rule's configuration, stored in ``meta.json``.

        Raises:
            OSError: on every rank, if the directory or a rank's file cannot
                be created or written.
            ValueError: if ``ctx`` is on another communicator than ``comm``.
        """
        if self._file is not None:
            return
        if self._ctx is not None:
            self._file = _open_lines(self.path, "a")
            self.summary = None
            return
        ctx = self._resolve_context(ctx)
        error = None
        start = time.time()
        if ctx.rank == 0:
            error = _try(lambda: self._create(ctx, config, start))
        error = ctx.bcast(error, root=0)
        if error is not None:
            raise _on_every_rank(OSError(
                f"cannot create the run directory {self.run_dir!r}: {error}; "
                "pass record= (or Recorder()) a directory every rank can "
                "write"))
        path = os.path.join(self.run_dir, _runs.rank_file(ctx.rank))
        opened = []
        # Appending: an old file is emptied at the first step, unless a
        # resumed run keeps its lines first (resume_at).
        mine = _try(lambda: opened.append(_open_lines(path, "a")))
        failures = [(r, e) for r, e in enumerate(ctx.allgather(mine))
                    if e is not None]
        if failures:
            for f in opened:
                f.close()
            raise _on_every_rank(OSError(
                f"cannot write the records in {self.run_dir!r}: " + "; ".join(
                    f"rank {r}: {e}" for r, e in failures)
                + ". Use a directory every rank can write (a shared "
                "filesystem across hosts)"))
        self._ctx, self.path, self._file = ctx, path, opened[0]
        self._empty_pending = True
        self._config = config
        self._barrier = ctx.comm.Barrier
        self._last_end = None
        atexit.register(self._flush_quietly)

    def begin_step(self):
        """Mark the start of a step.

        Optional: without it a step starts where the previous one ended,
        and the first step after :meth:`open` (or :meth:`close`) at its
        first timed exchange,
        so building and compiling a model before training does not count
        as compute (the first step's work before its exchange is then not
        counted either).
        """
        self._begin = time.perf_counter()

    def end_step(self, loss=None, *, epoch=None, samples=None, **metrics):
        """Write this step's line: calc, comm, wait, loss and metrics.

        ``calc`` is the time since :meth:`begin_step` (else since the
        previous step's end; see there for the first step) minus the comm
        and wait the rule timed in between, never below 0.

        Args:
            loss: the step's loss, if known.
            epoch: the epoch, if known.
            samples: samples this step trained on on this rank (default
                ``samples_per_step``).
            **metrics: other scalar metrics (``accuracy=0.9``).

        Raises:
            RuntimeError: before :meth:`open`.
            ValueError: for a metric that is not a scalar or whose name is
                one of the line's own fields.
        """
        now = time.perf_counter()
        if self._file is None:
            if self._ctx is None:
                raise RuntimeError(
                    "the recorder is not open: attach it to a rule before the "
                    "rule starts (rule.recorder = rec) or call rec.open()")
            self.open()
        begin = self._begin
        if begin is None:
            begin = self._last_end if self._last_end is not None else now
        comm, wait = self._comm_s, self._wait_s
        self._empty_old()
        line = {"step": self.step}
        if epoch is not None:
            line["epoch"] = int(epoch)
        line["calc"] = max(0.0, now - begin - comm - wait)
        line["comm"] = comm
        line["wait"] = wait
        line["time"] = time.time()
        if samples is None:
            samples = self.samples_per_step
        if samples is not None:
            line["samples"] = int(samples)
        if loss is not None:
            line["loss"] = _scalar("loss", loss)
        for name, value in metrics.items():
            if name in _runs.LINE_FIELDS:
                raise ValueError(
                    f"metric {name!r} clashes with a field of the record "
                    f"line {sorted(_runs.LINE_FIELDS)}; rename it")
            line[name] = _scalar(name, value)
        self._file.write(json.dumps(line) + "\n")
        self.step += 1
        self._comm_s = self._wait_s = 0.0
        self._begin = None
        self._last_end = now
        if self.step % self.flush_every == 0:
            self._file.flush()

    def close(self):
        """Flush and close this rank's file; rank 0 writes the summary.

        Collective (every rank calls it): the ranks' totals are gathered
        over MPI, rank 0 writes ``summary.json`` and, with ``verbose``,
        prints one paragraph. Calling it again without new steps does
        nothing; :meth:`open` or :meth:`end_step` reopen the file.

        Returns:
            dict: the summary (on every rank), or None if never opened.
        """
        if self._ctx is None:
            return None
        if self._file is None:
            return self.summary
        self._empty_old()
        self._file.close()
        self._file = None
        self._last_end = None        # the next step counts from its exchange
        ctx = self._ctx
        ranks = ctx.allgather(
            _runs.rank_summary(ctx.rank, _runs.read_lines(self.path)))
        summary = _runs.job_summary(self.run_dir, self._config, ranks)
        if ctx.rank == 0:
            _write_json(os.path.join(self.run_dir, _runs.SUMMARY_FILE),
                        summary)
            if self.verbose:
                print(_runs.summary_text(summary), flush=True)
        self.summary = summary
        return summary

    def flush(self):
        """Write this rank's buffered lines to disk now (checkpoints call it,
        so the records up to a checkpoint survive a kill)."""
        if self._file is not None:
            self._empty_old()
            self._file.flush()

    def resume_at(self, step):
        """Continue a run resumed from a checkpoint taken at ``step``.

        Keeps this rank's lines before ``step`` (those after it were
        recorded after the checkpoint, by the run that died, and are
        trained again), and numbers the next step ``step``. The adapters
        call it when they restore a checkpoint. Not collective.

        Args:
            step: the restored step count (``rule.step``).
        """
        if self._file is None:
            raise RuntimeError("resume_at() needs an open recorder")
        self._file.flush()
        kept = [r for r in _runs.read_lines(self.path)
                if r.get("step", 0) < step]
        self._file.close()
        temp = f"{self.path}.tmp{os.getpid()}"
        with open(temp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(temp, self.path)
        self._file = _open_lines(self.path, "a")
        self._empty_pending = False
        self.step = int(step)

    # -- helpers ---------------------------------------------------------
    def _empty_old(self):
        if self._empty_pending:
            self._file.flush()
            self._file.truncate(0)
            self._empty_pending = False

    def _resolve_context(self, ctx):
        if ctx is None:
            return get_context(self._comm)
        if self._comm is not None and self._comm != ctx.comm:
            raise ValueError(
                "the recorder's comm is not the rule's communicator; give "
                "both the same comm (or leave the recorder's out)")
        return ctx

    def _create(self, ctx, config, start):
        os.makedirs(self.run_dir, exist_ok=True)
        meta = {"tmpi": __version__, "ranks": ctx.size,
                "start_time": start, "config": config,
                "measure_wait": self.measure_wait,
                "samples_per_step": self.samples_per_step,
                "argv": list(sys.argv)}
        _write_json(os.path.join(self.run_dir, _runs.META_FILE), meta)

    def _flush_quietly(self):
        if self._file is not None:
            try:
                self._file.flush()
            except (OSError, ValueError):
                pass


def make_recorder(record, *, comm=None):
    """A :class:`Recorder` from what an adapter's ``record=`` received.

    Args:
        record: a run directory (str or ``os.PathLike``) or a
            :class:`Recorder` (passed through).
        comm: the communicator for a new recorder.

    Returns:
        Recorder: the recorder.

    Raises:
        ValueError: for anything else.
    """
    if isinstance(record, Recorder):
        return record
    if isinstance(record, (str, os.PathLike)):
        return Recorder(record, comm=comm)
    raise ValueError(
        f"record={record!r} must be a run directory (str or os.PathLike) or "
        "a tmpi_core.Recorder")


# -- timers (preallocated; entered by rules around their exchanges) --------

class _ExchangeTimer:
    """Adds the block's time to comm, less any wait timed inside it; with
    ``barrier``, first times a barrier into wait (if ``measure_wait``)."""

    __slots__ = ("_rec", "_with_barrier", "_t0", "_w0")

    def __init__(self, rec, barrier):
        self._rec = rec
        self._with_barrier = barrier

    def __enter__(self):
        rec = self._rec
        if rec._last_end is None:           # the first step's start
            rec._last_end = time.perf_counter()
        if self._with_barrier and rec.measure_wait:
            t = time.perf_counter()
            rec._barrier()
            rec._wait_s += time.perf_counter() - t
        self._w0 = rec._wait_s
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        rec = self._rec
        rec._comm_s += (time.perf_counter() - self._t0) \
            - (rec._wait_s - self._w0)
        return False


class _WaitTimer:
    """Adds the block's time to wait."""

    __slots__ = ("_rec", "_t0")

    def __init__(self, rec):
        self._rec = rec

    def __enter__(self):
        self._t0 = time.perf_counter()
        if self._rec._last_end is None:     # the first step's start
            self._rec._last_end = self._t0
        return self

    def __exit__(self, *exc):
        self._rec._wait_s += time.perf_counter() - self._t0
        return False


def _not_opened():
    raise RuntimeError(
        "the recorder was attached after the rule started; attach it "
        "(rule.recorder = rec) before rule.start(), on every rank")


# -- files -------------------------------------------------------------------

def _on_every_rank(error):
    # Every rank raises it together: the abort hook lets each rank print it
    # instead of one rank's abort cutting the others' reports short.
    error.on_every_rank = True
    return error


def _open_lines(path, mode):
    return open(path, mode, buffering=1 << 16, encoding="utf-8")


def _try(action):
    try:
        action()
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def _write_json(path, obj):
    """Write ``obj`` as JSON atomically (temp file in the same dir + rename)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, default=repr)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _scalar(name, value):
    try:
        if np.ndim(value) != 0:
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"metric {name}={value!r} is not a scalar number; record scalars "
            "only") from None


def __getattr__(name):
    # PEP 562: the reading names that moved to tmpi_core.runs still resolve
    # here, with a warning, for code written against the old layout.
    if name in _MOVED:
        also = " (or tmpi_core.read_run)" if name == "read_run" else ""
        warnings.warn(
            f"tmpi_core.recorder.{name} moved to tmpi_core.runs.{name}; "
            f"import it from there{also}", DeprecationWarning, stacklevel=2)
        return getattr(_runs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
