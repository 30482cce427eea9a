"""Uneven data: ranks with different numbers of batches end an epoch together.

A generator without ``len()``, or shards of different sizes, give the ranks
different numbers of batches. A rank that stops early would leave the
others waiting in their next collective. :class:`UnevenBatches` iterates
this rank's batches and ends every rank's epoch at the same step, the step
after the last batch of the rank with the most: a rank that runs out tells
the others through the :class:`~tmpi_core.agreement.StopAgreement` (one
round per step, looking one batch ahead so that the agreement, decided one
round late, is still in time).

What a rank without data does until then depends on the rule:

* lockstep rules (BSP, synchronous EASGD): it runs the step on a filler
  batch (its last real one) with ``rule.has_batch = False``. BSP then
  averages over the ranks that had a batch, ``(1/c) sum g_i``, and every
  rank applies that average, so all stay equal. Synchronous EASGD ignores
  the mark: the rank trains on the filler (an adapter that can skip an
  update, like the Keras one, skips it).
* GoSGD and asynchronous EASGD: it yields nothing more and waits in the
  agreement, without training, until every rank is out (an asynchronous
  EASGD worker decides alone: its epoch ends with its data).
"""

from tmpi_core.agreement import StopAgreement

__all__ = ["UnevenBatches"]

_END = object()


class UnevenBatches:
    """Iterate this rank's batches; every rank's epoch ends at the same step.

    Args:
        batches: an iterable of batches, iterated anew each epoch (a list,
            a ``DataLoader``, an object whose ``__iter__`` restarts), or a
            function of no arguments returning a fresh iterator.
        rule: the :class:`tmpi_core.Rule` of the run (its
            :attr:`~tmpi_core.Rule.lockstep` and :attr:`~tmpi_core.Rule.role`
            decide what a rank without data does; its ``has_batch`` is set
            before every step).
        agreement: the run's :class:`~tmpi_core.agreement.StopAgreement`,
            so signals and end of data share one round per step (a
            :class:`tmpi_core.TrainingState` has one); default: a new one
            on ``rule.comm``.

    Attributes:
        steps: steps of the last (or current) epoch.
        own_batches: this rank's real batches in it.

    Raises:
        ValueError: for a ``batches`` that is not iterable; at the first
            filler step, for a rank of a lockstep rule that had no batch at
            all (there is nothing to run the step on).

    Example:
        >>> for xb, yb in UnevenBatches(my_batches, rule=updates.rule):
        ...     train(xb, yb)
    """

    def __init__(self, batches, *, rule, agreement=None):
        if not (callable(batches) or hasattr(batches, "__iter__")):
            raise ValueError(
                f"batches={batches!r} must be iterable (a list, a "
                "DataLoader) or a function returning an iterator")
        self.batches = batches
        self.rule = rule
        if agreement is None:
            agreement = StopAgreement(comm=rule.comm,
                                      collective=rule.role == "peer")
        self.agreement = agreement
        self.steps = 0
        self.own_batches = 0
        self._filler = None

    def _source(self):
        return iter(self.batches() if callable(self.batches)
                    else self.batches)

    def __iter__(self):
        rule, agreement = self.rule, self.agreement
        source = self._source()
        current = next(source, _END)
        ahead = next(source, _END) if current is not _END else _END
        self.steps = self.own_batches = 0
        decided = agreement.decide_now(has_data=current is not _END)
        agreement.round(has_data=ahead is not _END)        # about step 1
        try:
            while decided.with_data > 0:
                present = current is not _END
                if present:
                    self._filler = current
                    self.own_batches += 1
                    rule.has_batch = True
                    yield current
                elif rule.lockstep:
                    rule.has_batch = False
                    yield self._filler_batch()
                self.steps += 1
                current, ahead = ahead, (next(source, _END)
                                         if ahead is not _END else _END)
                # the decision about step k+1; this round is about k+2
                decided = agreement.round(has_data=ahead is not _END)
                if decided is None:     # completed by a save in between
                    decided = agreement.last
        finally:
            rule.has_batch = True
            # the round about the step after: every rank posted it
            agreement.complete()

    def _filler_batch(self):
        if self._filler is None:
            raise ValueError(
                "this rank has no batch at all, so it cannot run the "
                "steps the other ranks' data takes; give every rank at "
                "least one batch")
        return self._filler
