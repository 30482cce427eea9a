"""Blocks adapter: ``TMPISync``, the extension that makes a ``MainLoop``
data-parallel.

Usage::

    import tmpi_adapters.blocks as tmpi_blocks    # before blocks' submodules
    from blocks.main_loop import MainLoop

    main_loop = MainLoop(
        GradientDescent(cost=cost, parameters=params, step_rule=Adam()),
        stream,                                   # this rank's shard
        model=Model(cost),
        extensions=[tmpi_blocks.TMPISync("bsp"),  # first
                    TrainingDataMonitoring([cost], after_epoch=True),
                    FinishAfter(after_n_epochs=5), Printing()])
    main_loop.run()

Launch with ``mpiexec -n 4 python train.py``. Before the algorithm
compiles, the extension puts one exchange Op into its graph (the one the
Lasagne adapter uses, :mod:`tmpi_adapters._graph`): with BSP the gradients
(``mode='grads'``, the default: large-batch training for any step rule) or
the updated parameters (``mode='params'``) pass through it, one fused
collective per step; EASGD and GoSGD exchange the updated parameters and
the step rule's state.

Importing this module applies the Python 3.11 shims Blocks and Fuel need
(:mod:`tmpi_adapters.blocks_compat`). Blocks is on no package registry:
install it from its git repository.
"""

import os
import signal

import numpy as np

from tmpi_adapters import blocks_compat

blocks_compat.install()

from blocks.algorithms import GradientDescent, UpdatesAlgorithm  # noqa: E402
from blocks.extensions import SimpleExtension  # noqa: E402
from blocks.extensions.monitoring import (MonitoringExtension,  # noqa: E402
                                          TrainingDataMonitoring)
from blocks.extensions.saveload import Checkpoint  # noqa: E402
from blocks.main_loop import TrainingFinish  # noqa: E402

from tmpi_adapters import _graph  # noqa: E402
from tmpi_adapters.graph_checkpoint import SharedVariablesIO  # noqa: E402
from tmpi_core import (broadcast_arrays,  # noqa: E402
                       check_same_across_ranks, describe_arrays)
from tmpi_core.state import TrainingState  # noqa: E402

__all__ = ["TMPISync"]

_CALLBACKS = ("before_training", "before_epoch", "after_batch",
              "after_epoch", "after_training")


class TMPISync(SimpleExtension):
    """Synchronise a Blocks ``MainLoop`` across MPI ranks with a tmpi rule.

    Put it first in the main loop's extensions, on every rank, and give
    each rank its own shard of the data (:func:`tmpi_core.shard`).

    * Before training, before the algorithm compiles: checks that every
      rank built the same model, broadcasts rank 0's parameters and step
      rule state, and puts the exchange into the algorithm's graph. BSP
      ``mode='grads'`` (default) replaces the gradients in the updates by
      their average ``(1/p) sum_i g_i``, so any step rule (Adam included)
      trains as on the batch of all ranks; it needs a ``GradientDescent``.
      ``mode='params'``, EASGD and GoSGD pass the new values of the
      parameters and of the step rule's state (momentum velocities) through
      the exchange. One fused collective per step.
    * Every epoch ends at the same step on every rank: a rank whose Fuel
      stream runs out first runs steps marked as empty until the longest
      is done (BSP averages only the ranks that had a batch; see
      :class:`tmpi_core.UnevenBatches`). Every rank needs at least one
      batch per epoch.
    * ``TrainingDataMonitoring`` records are the mean over ranks on every
      rank (BSP, synchronous EASGD: at every write; GoSGD: at epoch ends;
      asynchronous EASGD workers never meet, so theirs stay local).
    * Blocks' own ``Checkpoint`` extensions run on rank 0 only (this
      extension clears their conditions elsewhere); their pickle loads,
      but its exchange is not connected: resume from tmpi's checkpoint.
    * ``checkpoint=DIR``: tmpi's checkpoint (parameters, step rule state,
      rule state, epoch, iteration count, random states), written every
      ``checkpoint_every`` epochs and when the ranks agree to stop on
      SIGINT/SIGTERM; a run started with the same ``DIR`` resumes from the
      newest at its epoch (``FinishAfter(after_n_epochs=N)`` counts the
      epochs done before).
    * SIGINT/SIGTERM on any rank: every rank stops after the same batch
      and training finishes as Blocks' own interrupt does.
    * After training: every rank holds the rule's final model (BSP: the
      average; EASGD: the center; GoSGD: the weighted consensus).

    Asynchronous EASGD (``TMPISync('easgd', tau=4)``): rank 0 serves the
    center and does not train; its main loop ends, holding the center, when
    the workers' do. With ``checkpoint=DIR`` it saves the center once per
    ``checkpoint_every`` epochs' worth of the workers' exchanges, and the
    workers save nothing. Parameters of the model the algorithm does not
    update are broadcast once and not exchanged.

    Args:
        rule: ``'bsp'``, ``'easgd'``, ``'gosgd'`` or a
            :class:`tmpi_core.Rule`.
        average_monitoring: average ``TrainingDataMonitoring`` records over
            ranks (default True).
        comm: an ``mpi4py.MPI.Comm`` for a rule given by name; default
            ``COMM_WORLD``.
        checkpoint: a directory for tmpi checkpoints, or None.
        checkpoint_every: write one every this many epochs.
        checkpoint_keep: how many of the newest to keep.
        name: the extension's name in the main loop.
        **options: the rule's options (``mode='params'``, ``every=4``,
            ``tau=4``, ``p=0.5``, ``strategy='asa16'``).

    Attributes:
        rule: the :class:`tmpi_core.Rule`.
        state: the run's :class:`tmpi_core.TrainingState` (made before
            training).

    Raises:
        ValueError: for an unknown rule or option, or a bad argument, on
            every rank before any communication; before training, on every
            rank, for an algorithm it cannot synchronise or models that
            differ across ranks.

    Example:
        >>> MainLoop(algorithm, stream, model=model,
        ...          extensions=[TMPISync("bsp"),
        ...                      FinishAfter(after_n_epochs=5)])
    """

    def __init__(self, rule="bsp", *, average_monitoring=True, comm=None,
                 checkpoint=None, checkpoint_every=1, checkpoint_keep=2,
                 name=None, **options):
        if not isinstance(average_monitoring, bool):
            raise ValueError(f"average_monitoring={average_monitoring!r} "
                             "must be True or False")
        if checkpoint is not None and (
                not isinstance(checkpoint, (str, os.PathLike))
                or not str(checkpoint)):
            raise ValueError(f"checkpoint={checkpoint!r} must be a directory "
                             "path (str or os.PathLike) or None")
        for key, value in (("checkpoint_every", checkpoint_every),
                           ("checkpoint_keep", checkpoint_keep)):
            if isinstance(value, bool) or not isinstance(value, int) \
                    or value < 1:
                raise ValueError(f"{key}={value!r} must be an integer >= 1")
        if comm is not None and not isinstance(rule, str):
            raise ValueError(
                "comm= goes with a rule name; a Rule instance runs on the "
                "comm given to its own constructor")
        self.rule = _graph._make_rule(rule, comm, dict(options),
                                      default_mode="grads")
        super().__init__(name=name, **{c: True for c in _CALLBACKS})
        self.average_monitoring = average_monitoring
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.checkpoint_keep = checkpoint_keep
        self.state = None
        self._attached = True
        self._reset()

    def _reset(self):
        self._started = []          # what rule.start was given, in order
        self._epoch = None          # this epoch's _EqualIterations
        self._monitors = []         # TrainingDataMonitoring we average
        self._stopping = False
        self._epoch_start = 0       # iterations_done when this epoch began

    # -- Blocks' callbacks --------------------------------------------------
    def do(self, which_callback, *args):
        """Run the step of ``which_callback`` (Blocks calls it)."""
        if not self._attached:
            raise RuntimeError(
                "this TMPISync was unpickled from a Blocks checkpoint and "
                "is not connected to any rank; start a new MainLoop with a "
                "new TMPISync (resume with TMPISync(checkpoint=DIR))")
        getattr(self, "_" + str(which_callback))()

    def _before_training(self):
        main_loop = self.main_loop
        algorithm = main_loop.algorithm
        if not isinstance(algorithm, UpdatesAlgorithm):
            raise ValueError(
                f"TMPISync needs an UpdatesAlgorithm (GradientDescent); the "
                f"main loop's algorithm is a {type(algorithm).__name__}")
        # Blocks' UpdatesAlgorithm.initialize() sets _function
        if getattr(algorithm, "_function", None) is not None:
            raise ValueError(
                "the main loop's algorithm is already compiled, so TMPISync "
                "cannot put its exchange in; give it to the MainLoop's "
                "extensions before run() and do not initialize() the "
                "algorithm yourself")
        self._reset()
        rule = self.rule
        lib = _graph.graph_lib("theano")
        params, untrained, name = _parameters(main_loop, algorithm)
        state_vars = _step_rule_state(algorithm)
        if rule.exchanges_gradients:
            self._started = params + state_vars
            self._exchange_gradients(lib, algorithm, params)
            _set_values(self._started, rule.start(
                _values(self._started),
                names=[name(v) for v in self._started]))
            extra = untrained
        else:
            updated = {id(v) for v, _ in algorithm.updates}
            candidates = params + state_vars + untrained
            self._started = [v for v in candidates
                             if id(v) in updated and _graph._is_float(v)]
            if not self._started:
                raise ValueError(
                    "the algorithm updates none of the model's parameters: "
                    "nothing to synchronise")
            new = _graph.distributed(lib, algorithm.updates, rule,
                                     params=self._started)
            algorithm.updates = list(new.items())
            extra = [v for v in candidates
                     if all(v is not w for w in self._started)]
        if extra:
            # what the algorithm does not change: rank 0's values, once
            ctx = rule.context
            values = _values(extra)
            check_same_across_ranks(
                ctx, describe_arrays(values, [name(v) for v in extra]),
                "parameters")
            _set_values(extra, broadcast_arrays(ctx, values))
        self.state = TrainingState(
            rule, SharedVariablesIO(self._started + extra, self._started))
        if self.checkpoint is not None:
            self.state.use_directory(self.checkpoint,
                                     keep=self.checkpoint_keep,
                                     every_epochs=self.checkpoint_every)
        self._restore(main_loop)
        if self.rank != 0:
            for extension in main_loop.extensions:
                if isinstance(extension, Checkpoint):
                    extension.set_conditions()      # rank 0 writes
        if self.average_monitoring and rule.role == "peer" \
                and rule.context.size > 1:
            for extension in main_loop.extensions:
                if isinstance(extension, TrainingDataMonitoring):
                    extension.add_records = _AveragedRecords(self, extension)
                    self._monitors.append(extension)
        self.state.arm()
        if rule.role == "server":
            # saving the center once per checkpoint_every epochs' worth of
            # the workers' exchanges (their shards are the size of this
            # rank's, its stream says how many batches that is)
            restored = self.state.restored
            self.state.serve(
                steps_per_epoch=_batches_per_epoch(main_loop.data_stream),
                start_epoch=(int(restored.meta["epoch"]) if restored
                             else 0))
            raise TrainingFinish        # the server does not train

    def _restore(self, main_loop):
        epoch = self.state.restore()
        restored = self.state.restored
        if restored is not None:
            status = main_loop.log.status
            status["epochs_done"] = epoch
            status["iterations_done"] = int(
                restored.meta.get("iterations_done", 0))

    def _before_epoch(self):
        main_loop = self.main_loop
        self._epoch_start = main_loop.log.status["iterations_done"]
        self._epoch = _EqualIterations(
            main_loop.epoch_iterator,
            self.state.batches(main_loop.epoch_iterator))
        main_loop.epoch_iterator = self._epoch

    def _after_batch(self):
        state = self.state
        if state.interrupted and not self._stopping:
            # every rank learnt it at the same step: stop after this batch
            self._stopping = True
            log = self.main_loop.log
            log.current_row["training_finish_requested"] = True
            log.current_row["tmpi_interrupted"] = True
            if state.store is not None and self.rule.role == "peer":
                # resuming starts this epoch anew: count from its start
                status = log.status
                state.meta["iterations_done"] = self._epoch_start
                state.save(epoch=status["epochs_done"],
                           batch=status["iterations_done"] - self._epoch_start,
                           interrupted=True)

    def _after_epoch(self):
        self._epoch = None
        state = self.state
        status = self.main_loop.log.status
        if state.store is None or self._stopping \
                or self.rule.role != "peer" \
                or status["epochs_done"] % self.checkpoint_every:
            return
        state.meta["iterations_done"] = status["iterations_done"]
        state.save(epoch=status["epochs_done"])

    def _after_training(self):
        if self._epoch is not None:
            self._epoch.close()     # a stop within an epoch
            self._epoch = None
        rule = self.rule
        _set_values(self._started, rule.finalize(_values(self._started)))
        self.state.close()
        main_loop = self.main_loop
        # Blocks put its original handlers back before after_training;
        # closing the state put back Blocks' own: undo that
        for sig, handler in ((signal.SIGINT, "original_sigint_handler"),
                             (signal.SIGTERM, "original_sigterm_handler")):
            if hasattr(main_loop, handler):
                signal.signal(sig, getattr(main_loop, handler))
        for monitor in self._monitors:
            monitor.__dict__.pop("add_records", None)
        self._monitors = []
        rule.close()

    # -- helpers ------------------------------------------------------------
    @property
    def rank(self):
        """This process's rank in the rule's communicator."""
        return self.rule.context.rank

    def _exchange_gradients(self, lib, algorithm, params):
        if not isinstance(algorithm, GradientDescent):
            raise ValueError(
                f"TMPISync({self.rule.name!r}) averages gradients, which "
                "needs a GradientDescent algorithm (the main loop's is a "
                f"{type(algorithm).__name__}); use mode='params'")
        import theano

        grads = [algorithm.gradients[p] for p in params]
        averaged = _graph.distributed_grads(lib, grads, self.rule)
        pairs = list(algorithm.updates)
        # every use of a gradient in the updates (the step rule's steps,
        # monitors added before) now reads the average
        values = theano.clone([value for _, value in pairs],
                              replace=dict(zip(grads, averaged)))
        algorithm.updates = [(var, value)
                             for (var, _), value in zip(pairs, values)]

    def _average_records(self, record_tuples):
        """The mean over ranks of monitoring records (collective).

        Args:
            record_tuples: ``(name, value)`` pairs, the same names in the
                same order on every rank.

        Returns:
            list of ``(name, mean)``: numeric values averaged (floats keep
            their dtype), others left as they are.

        Raises:
            ValueError: on every rank, when ranks monitor different names.
        """
        records = [(name, np.asarray(value)) for name, value in record_tuples]
        everyone = self.rule.context.allgather(records)
        names = [[n for n, _ in mine] for mine in everyone]
        if any(n != names[0] for n in names):
            raise ValueError(
                "ranks monitor different quantities "
                f"{dict(enumerate(names))}; give every rank the same "
                "TrainingDataMonitoring")
        out = []
        for i, (name, value) in enumerate(records):
            values = [mine[i][1] for mine in everyone]
            if not all(_is_number(v) and v.shape == value.shape
                       for v in values):
                out.append((name, value))
                continue
            mean = np.mean(np.stack(values).astype(np.float64), axis=0)
            if np.issubdtype(value.dtype, np.floating):
                mean = mean.astype(value.dtype)
            out.append((name, np.asarray(mean)))
        return out

    def __getstate__(self):
        # Blocks' Checkpoint pickles the main loop, this extension in it:
        # keep what Blocks needs, not the rule's communicator and buffers.
        state = {k: v for k, v in self.__dict__.items()
                 if k in ("name", "_conditions", "_main_loop",
                          "average_monitoring", "checkpoint",
                          "checkpoint_every", "checkpoint_keep")}
        state["_attached"] = False
        return state


class _AveragedRecords:
    """``TrainingDataMonitoring.add_records`` with the values averaged over
    ranks first (set on the instance while a :class:`TMPISync` trains)."""

    def __init__(self, sync, monitor):
        self.sync = sync
        self.monitor = monitor

    def __call__(self, log, record_tuples):
        record_tuples = list(record_tuples)
        sync = self.sync
        # A rule whose ranks do not step in lockstep (GoSGD) may be at
        # different batches within an epoch: meet only at its end.
        if record_tuples and sync._attached and (
                sync.rule.lockstep
                or not sync.main_loop.status.get("epoch_started", False)):
            record_tuples = sync._average_records(record_tuples)
        MonitoringExtension.add_records(self.monitor, log, record_tuples)


class _EqualIterations:
    """The main loop's epoch iterator, ended at the same step on every rank.

    Pickles as the Fuel iterator it wraps (Blocks' Checkpoint pickles the
    main loop's iteration state).
    """

    def __init__(self, source, uneven):
        self.source = source
        self.uneven = uneven
        self._steps = iter(uneven)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._steps)

    def close(self):
        """End the epoch here (collective: completes the stop agreement's
        round in flight)."""
        close = getattr(self._steps, "close", None)
        if close is not None:
            close()

    def __reduce__(self):
        return _identity, (self.source,)


def _identity(value):
    return value


# -- the algorithm's variables ----------------------------------------------

def _parameters(main_loop, algorithm):
    """``(trained, untrained, name)``: the parameters the algorithm trains,
    the model's others, and a function naming a variable (by its brick's
    path where the main loop has a model)."""
    try:
        model = main_loop.model
    except AttributeError:
        model = None
    paths = {}
    model_params = []
    if model is not None and hasattr(model, "get_parameter_dict"):
        for path, var in model.get_parameter_dict().items():
            paths[id(var)] = path
            model_params.append(var)
    if isinstance(algorithm, GradientDescent):
        params = list(algorithm.parameters)
    elif model_params:
        params = model_params
    else:
        raise ValueError(
            "TMPISync cannot tell the parameters of a "
            f"{type(algorithm).__name__} without a model: pass "
            "MainLoop(..., model=Model(cost))")
    untrained = [v for v in model_params if all(v is not p for p in params)]
    for i, p in enumerate(params):
        if not hasattr(p, "get_value"):
            raise ValueError(f"parameter {i} ({p!r}) is not a shared "
                             "variable")

    def name(var):
        return paths.get(id(var)) or _graph._name(var)

    return params, untrained, name


def _batches_per_epoch(stream):
    """Batches per epoch of a Fuel stream whose scheme says, else None."""
    scheme = getattr(stream, "iteration_scheme", None)
    indices = getattr(scheme, "indices", None)
    batch_size = getattr(scheme, "batch_size", None)
    if indices is None or not batch_size:
        return None
    return -(-len(indices) // batch_size)


def _step_rule_state(algorithm):
    """The shared variables a GradientDescent's step rule keeps (momentum
    velocities, Adam's moments and time)."""
    pairs = (algorithm.step_rule_updates
             if isinstance(algorithm, GradientDescent) else [])
    out = []
    for var, _ in pairs:
        if hasattr(var, "get_value") and _graph._is_float(var) \
                and all(var is not v for v in out):
            out.append(var)
    return out


def _values(variables):
    return [v.get_value(borrow=True) for v in variables]


def _set_values(variables, values):
    _graph._set_values(variables, values)


def _is_number(array):
    return np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
