"""BSP: bulk synchronous parallel averaging of gradients or parameters."""

import numpy as np

from tmpi_core.checks import check_same_across_ranks, describe_arrays
from tmpi_core.exchangers import STRATEGIES, make_exchanger
from tmpi_core.rules.base import Rule, fused_buffer_for, read_params

__all__ = ["BSP", "NonFiniteError"]

MODES = ("grads", "params")
NONFINITE = (None, "raise", "skip")


class NonFiniteError(FloatingPointError):
    """NaN or Inf in the exchanged values; raised on every rank at once
    (the job then ends without an MPI abort)."""

    on_every_rank = True


class BSP(Rule):
    """Bulk synchronous parallel SGD: every rank averages, every ``every`` steps.

    ``mode='grads'``: ``g <- (1/p) sum_i g_i`` before the optimizer applies
    it — exactly large-batch SGD (batch ``p*b``) for any optimizer, Adam
    included. ``mode='params'``: each rank applies its own update, then
    ``x <- (1/p) sum_i x_i`` every ``every`` steps (Theano-MPI's ``avg``);
    equal to large-batch SGD for plain and momentum SGD when ranks start
    equal; ``every > 1`` is local SGD / periodic model averaging (Lin et al.
    2018, "Don't Use Large Mini-Batches, Use Local SGD").

    Uneven data: on a step where only ``c`` of the ``p`` ranks have a batch
    (:attr:`has_batch` False on the others), the average is over those:
    ``g <- (1/c) sum_{i has a batch} g_i``, and every rank applies it, so
    the ranks stay equal; a step where no rank has a batch is skipped
    (``'grads'``: :meth:`on_gradients` returns ``None``). The count travels
    in the same collective as the values (one more element).

    Args:
        mode: ``'grads'`` (default) or ``'params'``.
        every: period in steps; ``> 1`` needs ``mode='params'``.
        strategy: exchanger name: ``'auto'`` (default: ``'shm'`` when
            every rank is on one host, ``'ar'`` with one rank per host,
            else ``'hier'``), ``'ar'``, ``'asa16'``, ``'shm'``, ``'hier'``
            or ``'hier16'`` (see :func:`tmpi_core.make_exchanger`).
        lr_scaling: ``None`` or ``'linear'`` (see :class:`Rule`).
        warmup_steps: warm-up steps for linear scaling.
        nonfinite: what to do when a rank's gradients (or, in ``'params'``
            mode, parameters) hold NaN or Inf: ``None`` (default, no check:
            the average is NaN everywhere), ``'raise'`` (a
            :class:`NonFiniteError` on every rank naming the ranks and the
            step) or ``'skip'`` (``'grads'`` mode: :meth:`on_gradients`
            returns ``None`` on every rank and the adapter skips that
            update; counted in ``skipped``). The check costs two passes
            over the buffer per exchange.
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.

    Raises:
        ValueError: for an unknown mode, strategy or ``nonfinite``, or
            ``every > 1`` with ``mode='grads'``.

    Example:
        >>> rule = BSP(mode="params", every=4)   # local SGD, average every 4
    """

    name = "bsp"
    title = "BSP"

    def __init__(self, *, mode="grads", every=1, strategy="auto",
                 lr_scaling=None, warmup_steps=0, nonfinite=None, comm=None):
        super().__init__(every=every, lr_scaling=lr_scaling,
                         warmup_steps=warmup_steps, comm=comm)
        if mode not in MODES:
            raise ValueError(
                f"mode={mode!r} is not a BSP mode; use 'grads' (average "
                "gradients, exact large-batch SGD) or 'params' (average "
                "parameters after each update)"
            )
        if mode == "grads" and self.every != 1:
            raise ValueError(
                f"every={every} needs mode='params': gradients are averaged "
                "every step; periodic averaging (local SGD) averages parameters"
            )
        if not isinstance(strategy, str) or strategy not in STRATEGIES:
            raise ValueError(
                f"strategy={strategy!r} is not a known exchanger; choose one "
                f"of {list(STRATEGIES)}"
            )
        if nonfinite not in NONFINITE:
            raise ValueError(
                f"nonfinite={nonfinite!r} must be None (no check), 'raise' "
                "or 'skip'")
        if nonfinite == "skip" and mode != "grads":
            raise ValueError(
                "nonfinite='skip' needs mode='grads' (a parameter update "
                "already applied cannot be skipped); use 'raise'")
        self.mode = mode
        self.strategy = strategy
        self.nonfinite = nonfinite
        self.skipped = 0
        self._exchanger = None
        self._grads = None
        self._params = None
        self._had_batch = False     # since the last parameter average

    def config(self):
        """Return the options every rank must share."""
        return dict(super().config(), mode=self.mode, strategy=self.strategy,
                    nonfinite=self.nonfinite)

    resizable = True        # no per-rank state: resumes on any rank count

    @property
    def exchanges_gradients(self):
        """True in ``'grads'`` mode: :meth:`on_gradients` averages them."""
        return self.mode == "grads"

    @property
    def ranks_identical(self):
        """In ``'grads'`` mode every rank applies the same averaged gradient,
        so parameters and optimizer state stay equal across ranks."""
        return self.mode == "grads"

    def _on_ready(self):
        self._exchanger = make_exchanger(self.strategy, self.ctx.comm)
        self._inv_size = 1.0 / self.ctx.size

    def _on_start(self, spec):
        # the parameter average reduces in place in the exchanger's memory
        self._params = fused_buffer_for(spec, self._params,
                                        allocate=self._exchanger.allocate,
                                        tail=1)

    def _on_close(self):
        self._grads = None
        self._params = None
        self._had_batch = False

    def on_gradients(self, grads):
        """Average gradients over ranks (``mode='grads'``).

        Args:
            grads: numpy arrays in a fixed order; after the first call a
                ``None`` entry counts as zeros (a parameter without gradient).

        Returns:
            list of averaged arrays (views of the fused gradient buffer, valid
            until the next call), or ``None`` in ``'params'`` mode and for a
            step skipped by ``nonfinite='skip'`` (the same on every rank).

        Raises:
            NonFiniteError: with ``nonfinite='raise'``, on every rank.
        """
        if self.mode != "grads":
            return None
        self._ready()
        if self._grads is None:
            missing = [i for i, g in enumerate(grads) if g is None]
            if missing:
                raise ValueError(
                    f"gradients {missing} are None on the first exchange, so "
                    "their shapes are unknown; pass zeros of the parameters' "
                    "shapes instead")
            spec = describe_arrays(grads)
            check_same_across_ranks(self.ctx, spec, "gradients")
            self._grads = fused_buffer_for(
                spec, allocate=self._exchanger.allocate, tail=1)
        with self._timer("collective", "gradient exchange", self.step,
                         self._grads):
            self._pack(self._grads, grads, self.has_batch)
            local_ok = self._check_local(self._grads)
            self._exchanger.allreduce_sum(self._grads)
        if not self._rescale(self._grads):
            return None                 # no rank had a batch: no update
        if not self._check_global(self._grads, local_ok, "gradients",
                                  self.step):
            self.skipped += 1
            return None
        return self._grads.views

    def check_bucketed(self, shapes):
        """Raise ``ValueError`` (on every rank) unless this rule can average
        gradients of these shapes bucket by bucket: ``'grads'`` mode,
        strategy ``'auto'``/``'ar'``, no ``nonfinite`` check, and the same
        shapes on every rank (collective)."""
        if self.mode != "grads":
            raise ValueError("overlapped buckets average gradients; this "
                             "BSP has mode='params'")
        if self.strategy not in ("auto", "ar"):
            raise ValueError(
                f"strategy={self.strategy!r}: overlapped buckets are "
                "allreduces of their own; use strategy='ar' or turn "
                "overlap off")
        if self.nonfinite is not None:
            raise ValueError(
                f"nonfinite={self.nonfinite!r} needs the whole buffer at "
                "once; turn overlap off to check for NaN/Inf")
        self._ready()
        check_same_across_ranks(
            self.ctx, [(f"#{i}", tuple(s), "float32")
                       for i, s in enumerate(shapes)], "gradients")

    def bucketed(self, shapes, *, bucket_bytes=4 << 20, order=None):
        """Gradient buckets for averaging overlapped with the backward pass
        (:class:`tmpi_core.overlap.GradientBuckets`), on this rule's
        communicator, its wait timed and guarded as :meth:`on_gradients`'s.

        Each bucket is one non-blocking MPI allreduce (the ``'ar'``
        strategy, bucket by bucket); ``nonfinite`` checks are not made.

        Args:
            shapes: the gradients' shapes, in parameter order.
            bucket_bytes: bytes per bucket.
            order: parameter indices in the order gradients arrive
                (default: reversed).

        Raises:
            ValueError: in ``'params'`` mode, with a ``strategy`` other than
                ``'auto'``/``'ar'``, with ``nonfinite`` set, or when the
                ranks' gradient shapes differ (on every rank).
        """
        from tmpi_core.overlap import GradientBuckets

        self.check_bucketed(shapes)
        buckets = GradientBuckets(
            shapes, comm=self.ctx.comm, bucket_bytes=bucket_bytes,
            order=order,
            timer=lambda: self._timer("blocked", "gradient exchange",
                                      self.step, buckets.layout))
        return buckets

    def wants_params(self):
        """True in ``'params'`` mode on every ``every``-th step."""
        return self.mode == "params" and (self.step + 1) % self.every == 0

    def end_step(self, params=None):
        """Count the step; in ``'params'`` mode, every ``every``-th step,
        average the parameters (see :meth:`Rule.end_step`).

        Returns:
            averaged parameters (views of the fused buffer) or ``None``.
        """
        exchange = self.wants_params()
        self.step += 1
        self._had_batch = self._had_batch or self.has_batch
        if not exchange:
            return None
        params = read_params(params)
        if params is None:
            raise ValueError(
                "end_step needs the parameters on an exchange step; pass "
                "them, or a function that reads them"
            )
        with self._timer("collective", "parameter average", self.step - 1,
                         self._params):
            return self._average_params(params, step=self.step - 1)

    def finalize(self, params):
        """Average the parameters once more so every rank ends identical.

        In ``'grads'`` mode trainable parameters are already equal; this also
        evens out non-trainable state (batch-norm statistics) and, in
        ``'params'`` mode with ``every > 1``, the last partial period.
        """
        with self._guard("final average", buffer=self._params):
            return self._average_params(params, final=True)

    def _average_params(self, params, step=None, final=False):
        # A rank that had no batch since the last average contributes
        # nothing and takes the others' average; the final one is over all.
        self._require_started()
        present = final or self._had_batch
        self._had_batch = False
        self._pack(self._params, params, present)
        local_ok = self._check_local(self._params)
        self._exchanger.allreduce_sum(self._params)
        if not self._rescale(self._params):
            return None                 # no rank trained: nothing changed
        self._check_global(self._params, local_ok, "parameters", step)
        return self._params.views

    def _pack(self, buffer, arrays, present):
        """Pack ``arrays`` scaled by ``1/p`` (one pass), or zeros on a rank
        without a batch; the tail counts the ranks that had one."""
        if present:
            buffer.pack(arrays, scale=self._inv_size)
            buffer.tail[0] = 1.0
        else:
            buffer.data.fill(0.0)

    def _rescale(self, buffer):
        """After the sum: ``(1/p) sum`` over ``c < p`` contributing ranks
        becomes ``(1/c) sum``. False when ``c == 0`` (nothing to apply)."""
        count = int(round(float(buffer.tail[0])))
        if count == self.ctx.size:
            return True
        if count == 0:
            return False
        values = buffer.data[:buffer.data.size - buffer.tail.size]
        np.multiply(values, self.ctx.size / count, out=values)
        return True

    def _check_local(self, buffer):
        return True if self.nonfinite is None else _all_finite(buffer.data)

    def _check_global(self, buffer, local_ok, what, step=None):
        # NaN and Inf survive the sum, so the averaged buffer (equal on every
        # rank) tells every rank at once; only then do they compare notes.
        if self.nonfinite is None or _all_finite(buffer.data):
            return True
        bad = [r for r, ok in enumerate(self.ctx.allgather(local_ok))
               if not ok]
        step = self.step if step is None else step
        where = (f"on rank(s) {bad}" if bad else
                 "in the sum only (finite values overflowed)")
        if self.nonfinite == "skip":
            import warnings

            warnings.warn(f"BSP step {step}: NaN/Inf {what} {where}; "
                          "the update is skipped on every rank",
                          stacklevel=3)
            return False
        raise NonFiniteError(
            f"BSP step {step}: NaN/Inf {what} {where} (nonfinite="
            "'raise'); lower the learning rate, check the data on those "
            "ranks, or use nonfinite='skip'")

    def _require_started(self):
        if self._params is None:
            raise RuntimeError(
                "BSP.start(params) must run on every rank before parameters "
                "are exchanged"
            )


def _all_finite(a):
    # One pass, nothing allocated: a float32 sum in float64 cannot overflow,
    # so it is finite exactly when every element is.
    if a.dtype == np.float32:
        return bool(np.isfinite(np.sum(a, dtype=np.float64)))
    return bool(np.isfinite(np.sum(a))) or bool(np.isfinite(a).all())
