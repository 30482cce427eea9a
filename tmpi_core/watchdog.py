"""A bound on how long a rank may wait in an exchange: a hang becomes an error.

A collective waits for every rank. When one rank never arrives -- it called
the training function fewer times than the others, left its loop early, or
is stuck outside tmpi -- the others wait for good, and MPI cannot tell that
from a slow rank. With an exchange timeout set, a rank that has waited
longer than that inside one of its rule's blocking exchanges prints what it
was waiting for and aborts the whole job (non-zero exit status).

Off by default: a legitimately slow rank (rank 0 validating on its own for
an hour while the others wait at the next exchange) must not be killed.
Turn it on with the environment variable ``TMPI_EXCHANGE_TIMEOUT=SECONDS``
(e.g. ``mpiexec -n 4 -genv TMPI_EXCHANGE_TIMEOUT 600 python train.py``) or
with :func:`set_exchange_timeout`; choose several times the longest
legitimate gap between two ranks reaching the same exchange.

Guarded: the blocking exchanges of the rules that keep the ranks in
lockstep -- BSP's gradient and parameter averages (and its final average),
synchronous EASGD's elastic exchange -- and an asynchronous EASGD worker's
round trip to the server. Not guarded: waits where an early rank
legitimately waits for the slowest one's whole remaining training (GoSGD's
and asynchronous EASGD's ``finalize``); GoSGD never waits for a peer during
training.

When the timeout fires, each rank also prints its last few guarded
exchanges (rule, exchange, step, bytes and a fingerprint of the fused
buffer's layout): the rank that is out of step, or that exchanges a buffer
of another layout, stands out when the ranks' lines are read side by side.
"""

import collections
import os
import sys
import threading
import time

__all__ = ["ENV_VAR", "exchange_timeout", "guarded", "set_exchange_timeout"]

#: The environment variable read at import: seconds, or empty/``0``/``off``.
ENV_VAR = "TMPI_EXCHANGE_TIMEOUT"

#: Seconds between printing the message and ``MPI_Abort`` (the launcher
#: forwards output asynchronously).
_GRACE_S = 1.0
#: How many of its last guarded exchanges a rank prints on expiry.
HISTORY = 6
#: Seconds ``MPI_Abort`` gets before the process exits by itself: on a host
#: cut off from the launcher, MPICH's abort waits for a process manager
#: that cannot reach it.
ABORT_EXIT_S = 5.0

_timeout = None
_env_error = None


def _parse(value, source):
    if value is None or (isinstance(value, str)
                         and value.strip().lower() in ("", "0", "off",
                                                       "none")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{source}={value!r} must be a number of seconds "
                         "> 0 or None")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}={value!r} must be a number of seconds "
                         "> 0 (or 0/off to disable)") from None
    if seconds == 0:
        return None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{source}={value!r} must be a number of seconds "
                         "> 0 (or 0/off to disable)")
    return seconds


def set_exchange_timeout(seconds):
    """Set the longest wait in one exchange before the job is aborted.

    Args:
        seconds: a positive number, or ``None`` (or ``0``) to turn it off.
            Takes effect from the next exchange; may differ across ranks.

    Raises:
        ValueError: for a negative, infinite or non-numeric value.
    """
    global _timeout, _env_error
    _timeout = _parse(seconds, "exchange timeout")
    _env_error = None


def exchange_timeout():
    """The current exchange timeout in seconds, or ``None`` (off).

    Raises:
        ValueError: if ``TMPI_EXCHANGE_TIMEOUT`` holds something that is not
            a number of seconds (raised at the first exchange, on every rank
            that has it).
    """
    if _env_error is not None:
        raise ValueError(_env_error)
    return _timeout


try:
    _timeout = _parse(os.environ.get(ENV_VAR), ENV_VAR)
except ValueError as exc:
    _env_error = str(exc)


class _Watchdog:
    """One daemon thread per process watching the exchanges in progress."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active = {}              # id(guard) -> guard
        self._thread = None
        self.history = collections.deque(maxlen=HISTORY)

    def enter(self, guard):
        # a dict store and pop are atomic under the GIL: no lock per exchange
        self._active[id(guard)] = guard
        self.history.append(guard)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._watch, name="tmpi-exchange-watchdog",
                        daemon=True)
                    self._thread.start()

    def leave(self, guard):
        self._active.pop(id(guard), None)

    def _watch(self):
        while True:
            guards = list(self._active.values())     # one C call, atomic
            now = time.monotonic()
            shortest = min((g.timeout for g in guards), default=1.0)
            for g in guards:
                if now - g.since > g.timeout:
                    g.expire(now - g.since)
            time.sleep(min(1.0, max(0.05, shortest / 8)))


_WATCHDOG = _Watchdog()


class ExchangeGuard:
    """Context manager: abort the job if the block outlasts ``timeout``.

    Args:
        ctx: the :class:`tmpi_core.Context` (rank and communicator).
        what: what is being waited for, for the message: a string ("the
            BSP gradient exchange") or a ``(rule title, exchange)`` pair,
            joined only if the guard expires.
        timeout: seconds.
        step: the step, added to the message if not None (formatted only
            if the guard expires).
        buffer: the :class:`~tmpi_core.FlatBuffer` exchanged, if any: its
            bytes and layout fingerprint go into the history printed on
            expiry.
    """

    __slots__ = ("ctx", "what", "timeout", "step", "buffer", "since",
                 "_expired")

    def __init__(self, ctx, what, timeout, step=None, buffer=None):
        self.ctx = ctx
        self.what = what
        self.timeout = timeout
        self.step = step
        self.buffer = buffer
        self.since = None
        self._expired = False

    def describe(self):
        """One line: what, step, bytes and layout fingerprint."""
        what = self.what
        if not isinstance(what, str):
            what = "{} {}".format(*what)
        line = what + ("" if self.step is None else f", step {self.step}")
        if self.buffer is not None:
            line += (f", {self.buffer.nbytes} bytes, layout "
                     f"{self.buffer.fingerprint}")
        return line

    def __enter__(self):
        self.since = time.monotonic()
        _WATCHDOG.enter(self)
        return self

    def __exit__(self, *exc):
        _WATCHDOG.leave(self)
        return False

    def expire(self, waited):
        """Print why and abort the job (called by the watchdog thread)."""
        if self._expired:
            return
        self._expired = True
        ctx = self.ctx
        what = self.what
        if not isinstance(what, str):
            what = "the {} {}".format(*what)
        if self.step is not None:
            what += f" at step {self.step}"
        sys.stderr.write(
            f"tmpi: rank {ctx.rank} of {ctx.size} has waited {waited:.0f} s "
            f"in {what} ({ENV_VAR}={self.timeout:g}). Another rank is "
            "not taking part: it called the training step fewer times, "
            "left its loop early, or is stuck outside tmpi. Aborting the "
            "job.\n")
        history = list(_WATCHDOG.history)
        lines = "".join(
            f"tmpi: rank {ctx.rank}   {g.describe()}"
            f"{'   <- waiting here' if g is self else ''}\n"
            for g in history)
        sys.stderr.write(f"tmpi: rank {ctx.rank}: its last {len(history)} "
                         f"exchanges, oldest first:\n{lines}")
        sys.stderr.flush()
        time.sleep(_GRACE_S)
        # if the abort cannot reach the process manager (the link is down),
        # end this process anyway rather than wait for the link
        exit_timer = threading.Timer(ABORT_EXIT_S, os._exit, args=(1,))
        exit_timer.daemon = True
        exit_timer.start()
        ctx.comm.Abort(1)


def guarded(ctx, what, step=None):
    """A context manager bounding a blocking collective outside the rules
    (checkpoint saves and loads, the stop agreement) by the exchange
    timeout; a no-op when none is set.

    Args:
        ctx: the :class:`tmpi_core.Context`.
        what: what is waited for ("the checkpoint save").
        step: the step, if any, for the message.
    """
    import contextlib

    timeout = exchange_timeout()
    if timeout is None:
        return contextlib.nullcontext()
    return ExchangeGuard(ctx, what, timeout, step)
