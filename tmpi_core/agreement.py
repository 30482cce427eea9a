"""The stop agreement: ranks decide together to stop, without a barrier.

Two things end a run early on one rank only: a signal (Ctrl-C on the
launcher, SIGTERM from a scheduler) and the end of its data. Either must
become known to every rank at the same step, or the ranks part ways in
their collectives. :class:`StopAgreement` does it with one tiny
non-blocking allreduce per step (a *round*): each rank posts its flags and
reads the sum the round before posted, so no rank ever waits for a slower
one in a barrier of its own; a rule whose ranks do not move in lockstep
(GoSGD) keeps its slack.
"""

import signal

import numpy as np

from tmpi_core.context import get_context
from tmpi_core.watchdog import guarded

__all__ = ["Decision", "StopAgreement"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Decision:
    """What every rank learned from one round of a :class:`StopAgreement`.

    Attributes:
        interrupted: some rank got SIGINT/SIGTERM.
        with_data: how many ranks said they have data for the step the
            round was about (every rank, when none speaks of data).
    """

    __slots__ = ("interrupted", "with_data")

    def __init__(self, interrupted, with_data):
        self.interrupted = interrupted
        self.with_data = with_data

    def __repr__(self):
        return (f"Decision(interrupted={self.interrupted}, "
                f"with_data={self.with_data})")


class StopAgreement:
    """Agree across ranks on signals and end of data, one round per step.

    Every rank calls :meth:`round` at the same point of each step. The
    round posts this rank's flags in a non-blocking allreduce and returns
    the :class:`Decision` of the round before (``None`` at the first), so
    the ranks agree one step after the fact, all at the same step. A rank
    with role ``'server'`` or ``'worker'`` (asynchronous EASGD) does not
    meet the others during training and decides alone.

    Args:
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.
        collective: False to decide from this rank's own flags alone.

    Example:
        >>> agreement = StopAgreement()
        >>> agreement.arm()
        >>> for batch in batches:
        ...     train(batch)
        ...     decided = agreement.round()
        ...     if decided is not None and decided.interrupted:
        ...         break
        >>> agreement.close()
    """

    def __init__(self, *, comm=None, collective=True):
        if not isinstance(collective, bool):
            raise ValueError(f"collective={collective!r} must be True or "
                             "False")
        self.ctx = get_context(comm)
        self.collective = collective
        self.signals = []              # signal numbers received
        self.last = None               # the latest Decision
        self._flags = np.zeros(4)      # posted [signal, data], summed
        self._request = None
        self._posted = None            # deciding alone: the last flags
        self._previous = {}

    # -- signals ------------------------------------------------------------
    def arm(self):
        """Catch SIGINT/SIGTERM (noted, not raised) until :meth:`disarm`;
        also starts a fresh run of rounds."""
        self.signals.clear()
        self.last = None
        for sig in _SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:          # not the main thread
                pass

    def disarm(self):
        """Put back the signal handlers :meth:`arm` replaced."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame):
        self.signals.append(signum)

    # -- rounds -------------------------------------------------------------
    def round(self, *, has_data=True):
        """Post this rank's flags; return the previous round's decision.

        Args:
            has_data: whether this rank has data for the step this round is
                about (see :class:`tmpi_core.uneven.UnevenBatches`).

        Returns:
            the :class:`Decision` of the previous round (also kept in
            :attr:`last`), or ``None`` at the first round and after a
            :meth:`complete` that already returned it.
        """
        decided = self.complete()
        if self.collective:
            flags = self._flags
            flags[0] = 1.0 if self.signals else 0.0
            flags[1] = 1.0 if has_data else 0.0
            from mpi4py import MPI

            self._request = self.ctx.comm.Iallreduce(
                flags[0:2], flags[2:4], op=MPI.SUM)
        else:
            self._posted = bool(has_data)
        return decided

    def decide_now(self, *, has_data=True):
        """A blocking round: post and wait at once (the first step of a
        run of data, which has no round before it). Returns its
        :class:`Decision`."""
        self.round(has_data=has_data)
        return self.complete()

    def complete(self):
        """Wait for the round in flight and return its :class:`Decision`
        (``None`` when none is in flight). Collective like the round:
        every rank completes the same rounds."""
        if not self.collective:
            if self._posted is None:
                return None
            self.last = Decision(bool(self.signals), int(self._posted))
            self._posted = None
            return self.last
        if self._request is None:
            return None
        with guarded(self.ctx, "the stop agreement (signals, end of data)"):
            self._request.Wait()
        self._request = None
        self.last = Decision(bool(self._flags[2] > 0),
                             int(round(self._flags[3])))
        return self.last

    def close(self):
        """Wait for the round in flight (collective: every rank posted
        it) and put back the signal handlers."""
        self.complete()
        self.disarm()

    @property
    def interrupted(self):
        """True once a decided round said some rank got a signal (or,
        deciding alone, this rank got one)."""
        return self.last is not None and self.last.interrupted
