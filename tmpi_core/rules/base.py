"""What every rule shares: scheduling words, learning-rate scaling, state."""

import contextlib
import numbers

import numpy as np

from tmpi_core._version import __version__
from tmpi_core.broadcast import broadcast_arrays
from tmpi_core.buffer import FlatBuffer
from tmpi_core.checks import check_same_across_ranks, describe_arrays
from tmpi_core.context import get_context
from tmpi_core.watchdog import ExchangeGuard, exchange_timeout

__all__ = ["Rule"]

LR_SCALINGS = (None, "linear")
_NOT_TIMED = contextlib.nullcontext()      # reused: no allocation per step


class Rule:
    """Base class of the synchronisation rules.

    A rule works on lists of numpy arrays handed to it by an adapter at the
    framework's natural hooks, and returns arrays for the adapter to write
    back. The calls, in order, all collective (every rank makes them in the
    same order):

    * :meth:`start` once before training: checks that every rank holds the
      same parameter shapes and the same rule configuration, then returns
      rank 0's parameters (the initial broadcast);
    * :meth:`on_gradients` between gradient and update (rules that
      :attr:`exchanges_gradients`);
    * :meth:`end_step` once after each optimizer step, with the parameters
      or a function that reads them (called only when this step exchanges
      them); it returns parameters to write back, else ``None``;
    * :meth:`finalize` at the end of training: the model every rank keeps;
    * :meth:`close` when done: frees what the exchanger holds (a rule can
      :meth:`start` again after it). A rule is also a context manager.

    What adapters need to know is declared, never sniffed: :attr:`role`,
    :attr:`exchanges_gradients`, :attr:`lockstep`, :attr:`ranks_identical`,
    :attr:`resizable`, :attr:`comm` and :attr:`context`; they set
    :attr:`has_batch` on a step where this rank has no data.

    Attributes:
        recorder: a :class:`tmpi_core.Recorder` or None (the default). Set it
            on every rank before :meth:`start`, which opens it; the rule then
            times its exchanges into it (see :mod:`tmpi_core.recorder`).

    Args:
        every: exchange period in steps (``>= 1``).
        lr_scaling: ``None`` or ``'linear'`` — Goyal et al. 2017 linear
            scaling: the learning rate grows from ``lr`` to ``lr * p`` over
            ``warmup_steps`` steps (read it with :meth:`lr_factor`).
        warmup_steps: steps of gradual warm-up for ``lr_scaling='linear'``.
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.

    Raises:
        ValueError: for out-of-range or wrongly typed options.
    """

    name = None
    title = None            # how messages spell the rule ("GoSGD")

    def __init__(self, *, every=1, lr_scaling=None, warmup_steps=0, comm=None):
        self.every = _positive_int("every", every)
        if lr_scaling not in LR_SCALINGS:
            raise ValueError(
                f"lr_scaling={lr_scaling!r} is not supported; use None or "
                "'linear' (Goyal et al. 2017: lr * ranks after a warm-up)"
            )
        self.lr_scaling = lr_scaling
        self.warmup_steps = _nonnegative_int("warmup_steps", warmup_steps)
        self._comm = comm
        self.ctx = None
        self._checked = False
        self.step = 0
        self.recorder = None
        #: False on a step where this rank has no data of its own (set by
        #: :class:`tmpi_core.UnevenBatches` or an adapter before the step);
        #: BSP then averages over the ranks that had a batch.
        self.has_batch = True
        self._exchanger = None      # the rules that reduce make one

    # -- what adapters ask ----------------------------------------------------
    #: ``'peer'`` (every rank trains and meets the others), ``'server'`` (a
    #: rank that serves and does not train) or ``'worker'`` (trains, meets
    #: only the server). Asynchronous EASGD overrides it.
    role = "peer"
    #: True when the rule averages gradients between backward pass and
    #: update (:meth:`on_gradients`): adapters then hook the optimizer.
    exchanges_gradients = False
    #: True when a checkpoint of this rule can resume on another number of
    #: ranks (BSP); the other rules hold per-rank state.
    resizable = False
    #: True when every rank must take part in every step's exchange (BSP,
    #: synchronous EASGD): with uneven data a rank that has run out still
    #: runs steps, marked by :attr:`has_batch` (see :mod:`tmpi_core.uneven`).
    lockstep = True

    @property
    def comm(self):
        """The ``mpi4py`` communicator the rule runs on."""
        return self.context.comm

    @property
    def context(self):
        """The :class:`tmpi_core.Context` of :attr:`comm` (made on first
        use, which is collective)."""
        if self.ctx is None:
            self.ctx = get_context(self._comm)
        return self.ctx

    # -- configuration ----------------------------------------------------
    def config(self):
        """Return the rule's options as a dict (what every rank must share)."""
        return {"tmpi": __version__, "rule": self.name, "every": self.every,
                "lr_scaling": self.lr_scaling,
                "warmup_steps": self.warmup_steps}

    # -- lifecycle ----------------------------------------------------------
    def start(self, params, *, names=None):
        """Check agreement across ranks and broadcast rank 0's parameters.

        Args:
            params: numpy arrays, the model's parameters in a fixed order.
            names: optional names, used in error messages.

        Returns:
            list of arrays holding rank 0's values (exact in every dtype);
            the adapter writes them into the model.

        Raises:
            ValueError: on every rank, if ranks differ in configuration or in
                parameter count, shapes or dtypes.
        """
        self._ready()
        self._open_recorder()
        spec = describe_arrays(params, names)
        check_same_across_ranks(self.ctx, spec, "parameters")
        missing = [i for i, (_, shape, _) in enumerate(spec) if shape is None]
        if missing:                    # the same on every rank: all raise
            raise ValueError(
                f"params {missing} are None; pass the parameters' arrays")
        self._on_start(spec)
        return broadcast_arrays(self.ctx, params, root=0)

    def on_gradients(self, grads):
        """Exchange gradients before the update; ``None`` means unchanged."""
        return None

    def wants_params(self):
        """True when :meth:`end_step` will read the parameters this step.

        A query without side effects; adapters need not ask it: passing
        :meth:`end_step` a function that reads the parameters costs a read
        only on the steps that exchange.
        """
        return False

    def end_step(self, params=None):
        """Finish one local optimizer step; the one call per step.

        Args:
            params: the parameters as numpy arrays, or a function of no
                arguments that returns them (called only when this step
                exchanges them), or ``None`` on a step that does not.

        Returns:
            parameters to write back (views of a fused buffer, valid until
            the next exchange), or ``None`` when this step changed nothing.
        """
        self.step += 1
        return None

    def finalize(self, params):
        """Return the parameters every rank keeps when training ends."""
        raise NotImplementedError

    def close(self):
        """Free the exchanger's resources (shared-memory windows, persistent
        requests) and the fused buffers; collective where the exchanger's
        ``free`` is. Safe to call twice; :meth:`start` makes them anew."""
        if self._exchanger is not None:
            self._exchanger.free()
        self._exchanger = None
        self._checked = False
        self._on_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def lr_factor(self):
        """Multiplier for the base learning rate at the current step."""
        if self.lr_scaling is None:
            return 1.0
        size = self._size()
        if self.warmup_steps == 0 or self.step >= self.warmup_steps:
            return float(size)
        return 1.0 + (size - 1) * self.step / self.warmup_steps

    # -- state --------------------------------------------------------------
    #: names in :meth:`state_dict` whose values are equal on every rank, so a
    #: checkpoint stores them once (from rank 0)
    shared_state = ()
    #: True when every rank holds the same parameters and optimizer state
    #: between steps (BSP on gradients), so a checkpoint stores them once
    ranks_identical = False

    def state_dict(self):
        """Return this rank's rule state for a checkpoint.

        Returns:
            dict of numbers, JSON-able values and numpy arrays: the step
            counter (which is also the learning-rate warm-up position) and
            the rule's own state. Call :meth:`quiesce` first where a rule
            has messages in flight.
        """
        return {"step": self.step}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (after :meth:`start`)."""
        self.step = int(state["step"])

    def quiesce(self, params):
        """Bring the ranks to a consistent state for a checkpoint.

        Collective. Synchronous rules have nothing in flight and return
        ``None``; asynchronous ones deliver their messages first and return
        the parameters to write back (or ``None``).
        """
        return None

    # -- helpers ------------------------------------------------------------
    def _ready(self):
        """Make the context and check the configuration, once (collective).

        Called by :meth:`start` and by the first exchange, so a rule used
        only on gradients needs no ``start``.
        """
        if self.ctx is None:
            self.ctx = get_context(self._comm)
        self.ctx.ensure_abort_hook()
        if not self._checked:
            check_same_across_ranks(self.ctx, self.config(), "rule options")
            self._checked = True
            self._on_ready()
            self._open_recorder()

    def _open_recorder(self):
        """Open the recorder, if any (collective the first time)."""
        if self.recorder is not None:
            self.recorder.open(self.ctx, config=self.config())

    def _timer(self, kind, waits_for=None, step=None, buffer=None):
        """Context manager timing an exchange into the recorder: ``kind`` is
        ``'collective'`` (barrier into wait, then comm), ``'exchange'``
        (comm) or ``'blocked'`` (wait). A shared no-op without a recorder.

        With ``waits_for`` (what the block waits for, e.g. ``'gradient
        exchange'``) the block is also bounded by the exchange timeout, if
        one is set (:mod:`tmpi_core.watchdog`).
        """
        recorder = self.recorder
        timer = _NOT_TIMED if recorder is None else getattr(recorder, kind)
        guard = _NOT_TIMED if waits_for is None else self._guard(
            waits_for, step, buffer)
        if guard is _NOT_TIMED:
            return timer
        return guard if timer is _NOT_TIMED else _Guarded(guard, timer)

    def _guard(self, waits_for, step=None, buffer=None):
        """Context manager bounding a blocking wait by the exchange timeout
        (:mod:`tmpi_core.watchdog`); a shared no-op when none is set.
        ``buffer``, the fused buffer exchanged, is described on expiry."""
        timeout = exchange_timeout()
        if timeout is None:
            return _NOT_TIMED
        return ExchangeGuard(self.ctx, (self.title, waits_for), timeout,
                             step, buffer)

    def _on_ready(self):
        """Hook for subclasses: allocate what needs the context."""

    def _on_start(self, spec):
        """Hook for subclasses: allocate the buffers for parameters
        described by ``spec`` (collective where the exchanger's is)."""

    def _on_close(self):
        """Hook for subclasses: drop the buffers :meth:`close` frees."""

    def _require_ranks(self, minimum, why):
        """Raise (on every rank: all know the size) below ``minimum`` ranks."""
        if self.ctx.size < minimum:
            raise ValueError(
                f"{self.title} needs at least {minimum} ranks ({why}); this job has "
                f"{self.ctx.size}. Launch with mpiexec -n {minimum} or more, "
                "or use 'bsp'")

    def _size(self):
        return self.context.size


def read_params(params):
    """The arrays :meth:`Rule.end_step` was given: ``params`` itself, or
    what it returns when it is a function (see :meth:`Rule.end_step`)."""
    return params() if callable(params) else params


class _Guarded:
    """Enters an :class:`ExchangeGuard` around a recorder timer."""

    __slots__ = ("_guard", "_timer")

    def __init__(self, guard, timer):
        self._guard = guard
        self._timer = timer

    def __enter__(self):
        self._guard.__enter__()
        self._timer.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            self._timer.__exit__(*exc)
        finally:
            self._guard.__exit__(*exc)
        return False


def fused_buffer_for(spec, current=None, allocate=None, tail=0):
    """A :class:`FlatBuffer` for tensors described by ``spec``.

    float32 unless a tensor is float64 (Theano's default ``floatX``), so
    averaging never loses precision a model has; ``current`` is reused when
    it already fits.

    Args:
        spec: ``[(name, shape, dtype), ...]`` from ``describe_arrays``.
        current: a buffer to reuse if shapes and dtype match.
        allocate: the storage allocator (an exchanger's ``allocate``);
            collective when the exchanger's is.
        tail: extra scalars after the tensors (see :class:`FlatBuffer`).
    """
    shapes = [s for _, s, _ in spec]
    dtype = np.float64 if any(d == "float64" for _, _, d in spec) \
        else np.float32
    if current is not None and current.shapes == shapes \
            and current.data.dtype == dtype and current.tail.size == tail:
        return current
    return FlatBuffer(shapes, dtype=dtype, allocate=allocate, tail=tail)


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} must be an integer >= 1")
    if value < 1:
        raise ValueError(f"{name}={value!r} must be >= 1")
    return int(value)


def _nonnegative_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} must be an integer >= 0")
    if value < 0:
        raise ValueError(f"{name}={value!r} must be >= 0")
    return int(value)
