"""The model contract: parameters, a training step, a validation step.

A :class:`Model` is a built network plus its symbolic input and target.
:meth:`Model.train_step` compiles one step of training with the exchange
of a tmpi rule put in by the graph adapter of the model's library
(:mod:`tmpi_adapters.pytensor` or :mod:`tmpi_adapters.lasagne`);
:meth:`Model.val_step` compiles the inference pass. Nothing here talks MPI
except :meth:`TrainStep.finalize`, which averages batch norm's running
statistics when the rule left them per rank.

Example:
    >>> model = Model(net, (1, 32, 32), lib="pytensor")
    >>> step = model.train_step("bsp", lr=0.05)     # one call = one step
    >>> if not step.serve():                        # EASGD's server serves
    ...     for xb, yb in batches:
    ...         loss, acc = step(xb, yb)
    >>> step.finalize()                             # the rule's final model
    >>> loss, acc = model.val_step()(x_test, y_test)
"""

import numpy as np

from tmpi_layers import losses, optim
from tmpi_layers.backend import backend
from tmpi_layers.layers import Builder, Layer, Phase

__all__ = ["Model", "TrainStep", "ValStep"]


class Model:
    """A network ready to compile: built, with its input and target.

    Args:
        net: a :class:`tmpi_layers.Layer` (usually a
            :class:`~tmpi_layers.Sequential`) mapping an input batch to
            ``(batch, classes)`` logits.
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``.
        lib: ``'pytensor'``, ``'theano'`` or a :class:`tmpi_layers.Backend`;
            None takes PyTensor if installed, else Theano.
        seed: seed of the initial values (ranks that start apart are made
            equal by the rule's initial broadcast).
        dtype: dtype of the variables and inputs' cast (default: the
            library's floatX).
        name: the model's name in messages.
        compile: how its steps compile: ``'optimized'`` (the library's
            rewrites and C linker: fast steps) or ``'quick'`` (no
            rewrites, the Python linker: seconds to compile a deep
            network whose optimized compile takes minutes; see
            :mod:`tmpi_layers.backend`). None: ``lib``'s (a Backend's), else
            ``'optimized'``.

    Attributes:
        lib: the :class:`tmpi_layers.Backend`.
        net: the built network.
        input_shape: as given; ``classes``: the number of logits.
        x, y: the symbolic input batch (floatX) and targets (int32).

    Raises:
        ValueError: when the network does not take ``input_shape`` (naming
            the layer and the shapes) or does not end in flat logits.
    """

    def __init__(self, net, input_shape, *, lib=None, seed=0, dtype=None,
                 name=None, compile=None):
        if not isinstance(net, Layer):
            raise ValueError(f"net is a {type(net).__name__}, not a "
                             "tmpi_layers Layer")
        self.lib = backend(lib, compile)
        self.name = name or net.name or "model"
        self.input_shape = tuple(int(d) for d in input_shape)
        self.seed = int(seed)
        self.dtype = dtype or self.lib.floatX
        out = net.build(self.input_shape,
                        Builder(self.lib, np.random.RandomState(seed),
                                self.dtype))
        if len(out) != 1:
            raise ValueError(
                f"{self.name}: the network gives outputs of shape {out}; it "
                "must end in (classes,) logits (a Dense layer)")
        self.net = net
        self.classes = out[0]
        T = self.lib.T
        self.x = self.lib.input(1 + len(self.input_shape), "x")
        self.y = T.ivector("y")

    def __repr__(self):
        return (f"Model({self.name!r}, lib={self.lib.name!r}, "
                f"compile={self.lib.compile!r}, input "
                f"{self.input_shape}, {self.count_params():,} parameters)")

    @property
    def params(self):
        """The trainable shared variables, in network order."""
        return self.net.params

    @property
    def state(self):
        """Batch norm's running statistics (shared, not trained)."""
        return self.net.state

    def count_params(self):
        """Number of trainable scalars."""
        return int(sum(p.get_value(borrow=True).size for p in self.params))

    def get_values(self):
        """Copies of the values of :attr:`params` then :attr:`state`."""
        return [v.get_value() for v in self.params + self.state]

    def set_values(self, values):
        """Set :attr:`params` then :attr:`state` from ``values`` (as
        :meth:`get_values` returns them).

        Raises:
            ValueError: for a wrong count or shape, naming the variable.
        """
        shared = self.params + self.state
        values = list(values)
        if len(values) != len(shared):
            raise ValueError(f"{self.name}: {len(values)} values for "
                             f"{len(shared)} variables")
        for var, value in zip(shared, values):
            old = var.get_value(borrow=True)
            if np.shape(value) != old.shape:
                raise ValueError(f"{var.name}: value of shape "
                                 f"{np.shape(value)}, the variable has "
                                 f"{old.shape}")
            var.set_value(np.asarray(value, dtype=old.dtype))

    def outputs(self, *, training, streams=None):
        """Symbolic ``(loss, accuracy, updates)`` of one pass on ``x, y``.

        Args:
            training: batch statistics and dropout (True) or not.
            streams: the random source for dropout in training.

        Returns:
            the mean cross-entropy, the accuracy, and the state updates the
            pass needs (``[(shared, new)]``).
        """
        phase = Phase(self.lib, training=training, streams=streams)
        logits = self.net(self.x, phase)
        T = self.lib.T
        loss = losses.cross_entropy(logits, self.y, T)
        acc = losses.accuracy(logits, self.y, T, self.dtype)
        return loss, acc, phase.updates

    def train_step(self, rule="bsp", *, lr=0.01, momentum=0.9,
                   nesterov=False, weight_decay=0.0, optimizer=None,
                   comm=None, record=None, **options):
        """Compile one training step, synchronised by ``rule``.

        Where the exchange goes (the graph adapter does it):

        * ``'bsp'`` (``mode='grads'``, the default): the gradients are
          averaged before the update rule (``distributed_grads``): exactly
          large-batch SGD. Batch norm's running statistics stay per rank
          until :meth:`TrainStep.finalize` averages them.
        * ``'bsp'`` with ``mode='params'``: each rank updates, then the
          updated parameters, velocities and running statistics are
          averaged every ``every`` steps (``distributed``).
        * ``'easgd'``, ``'gosgd'``: the parameters and running statistics go
          through the rule after each update (``distributed(params=...)``);
          the velocities stay local.
        * None: no exchange (one process, or a reference).

        Args:
            rule: ``'bsp'``, ``'easgd'``, ``'gosgd'``, a
                :class:`tmpi_core.Rule` or None.
            lr: learning rate.
            momentum: momentum of the default update rule (0: plain SGD).
            nesterov: Nesterov momentum.
            weight_decay: L2 factor ``wd/2 * sum(W**2)`` over the weights
                of dense and convolution layers.
            optimizer: instead of the above, a function
                ``(grads, params) -> [(param, new)]`` (its own state
                included).
            comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.
            record: a run directory: the exchange is timed and
                :meth:`TrainStep.record` writes each step.
            **options: the rule's options (``mode='params'``, ``every=4``,
                ``tau=4``, ``alpha=0.45``, ``p=0.1``, ``strategy='asa16'``).

        Returns:
            TrainStep: ``step(x, y) -> (loss, accuracy)``.

        Raises:
            ValueError: for a bad option (from the rule or the adapter), on
                every rank before any collective.
        """
        lib, T = self.lib, self.lib.T
        if not lr > 0:
            raise ValueError(f"lr={lr!r} must be > 0")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")
        rank = 0
        if rule is not None:
            from tmpi_core import get_context

            rank = get_context(comm).rank
        streams = lib.random_streams(self.seed * 1009 + 7919 * (rank + 1))
        loss, acc, state_updates = self.outputs(training=True,
                                                streams=streams)
        state = self.state
        # the dropout generator's update is not a float tensor: it stays
        # out of what the rule sees
        is_state = {id(v) for v in state}
        extra = [(v, e) for v, e in state_updates if id(v) not in is_state]
        state_updates = [(v, e) for v, e in state_updates
                         if id(v) in is_state]
        objective = loss
        if weight_decay:
            objective = objective + weight_decay / 2 * sum(
                T.sqr(w).sum() for w in self.net.decayed)
        params = self.params
        if optimizer is None:
            def optimizer(g, p):
                if momentum:
                    return optim.momentum(g, p, lib, lr=lr, mu=momentum,
                                          nesterov=nesterov)
                return optim.sgd(g, p, lib, lr=lr)
        grads = lib.grad(objective, params)
        exchange = _exchange_of(rule, options)
        recorder = None
        dist = None
        if exchange == "grads":
            if record is not None:
                from tmpi_core import make_recorder

                recorder = make_recorder(record, comm=comm)
            grads = lib.adapter.distributed_grads(
                grads, rule, params=params + state, comm=comm,
                record=recorder, **options)
            updates = list(optimizer(grads, params)) + state_updates
        elif exchange == "updates":
            updates = list(optimizer(grads, params)) + state_updates
            chosen = None
            if not (isinstance(rule, str) and rule.lower() == "bsp"):
                chosen = params + state
            dist = lib.adapter.distributed(updates, rule, params=chosen,
                                           comm=comm, record=record,
                                           **options)
            updates = list(dist.items())
        else:
            if record is not None or options:
                raise ValueError(
                    "rule=None trains locally: record= and rule options "
                    f"({sorted(options)}) need a rule")
            updates = list(optimizer(grads, params)) + state_updates
        fn = lib.function([self.x, self.y], [loss, acc],
                          updates=updates + extra)
        return TrainStep(self, fn, exchange=exchange, updates=dist,
                         recorder=recorder, comm=comm)

    def val_step(self):
        """Compile the inference pass (running statistics, no dropout).

        Returns:
            ValStep: ``val(x, y) -> (loss, accuracy)``, means over the batch.
        """
        loss, acc, _ = self.outputs(training=False)
        fn = self.lib.function([self.x, self.y], [loss, acc])
        return ValStep(self, fn)

    def check_batch(self, x, y):
        """``(x, y)`` as the compiled steps take them: x cast to the model's
        dtype, y to int32.

        Raises:
            ValueError: naming the model and the shapes, when ``x`` is not a
                batch of ``input_shape`` samples, ``y`` not one label per
                sample, or a label is outside ``[0, classes)``.
        """
        x = np.asarray(x, dtype=self.dtype)
        y = np.asarray(y)
        if x.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self.name}: inputs of shape {x.shape}; the model takes "
                f"(batch, {', '.join(map(str, self.input_shape))})")
        if y.shape != (len(x),):
            raise ValueError(f"{self.name}: targets of shape {y.shape} for "
                             f"{len(x)} inputs; give one class index each")
        if len(y) and (y.min() < 0 or y.max() >= self.classes):
            raise ValueError(f"{self.name}: targets range over "
                             f"[{y.min()}, {y.max()}]; the model has "
                             f"{self.classes} classes")
        return x, y.astype(np.int32)


def _exchange_of(rule, options):
    if rule is None:
        return None
    if isinstance(rule, str):
        if rule.lower() == "bsp":
            mode = options.setdefault("mode", "grads")
            return "grads" if mode == "grads" else "updates"
        return "updates"
    return "grads" if rule.exchanges_gradients else "updates"


class TrainStep:
    """A compiled training step: ``step(x, y) -> (loss, accuracy)``.

    Made by :meth:`Model.train_step`. Each call is one step of the rule.

    Attributes:
        model: the :class:`Model`.
        exchange: ``'grads'``, ``'updates'`` or None (local).
        updates: the adapter's :class:`tmpi_adapters.pytensor.
            DistributedUpdates` (for ``'updates'``), else None.
        function: the compiled function (numpy in, ``[loss, acc]`` out).
    """

    def __init__(self, model, function, *, exchange, updates, recorder,
                 comm):
        self.model = model
        self.function = function
        self.exchange = exchange
        self.updates = updates
        self._recorder = recorder
        self._comm = comm

    def __call__(self, x, y):
        """Train on one batch; returns this rank's ``(loss, accuracy)``."""
        x, y = self.model.check_batch(x, y)
        loss, acc = self.function(x, y)
        return float(loss), float(acc)

    def serve(self):
        """EASGD's asynchronous server rank serves until the workers end
        (True there, False elsewhere); call it before the training loop and
        train where it returns False."""
        return self.updates.serve() if self.updates is not None else False

    def record(self, loss=None, **metrics):
        """Write the step just taken to the run directory (``record=``)."""
        if self.updates is not None:
            self.updates.record(loss, **metrics)
        elif self._recorder is not None:
            self._recorder.end_step(loss, **metrics)
        else:
            raise ValueError("this step records nothing; pass "
                             "record=RUN_DIR to train_step()")

    def batches(self, batches):
        """This rank's batches, ending every rank's epoch together when
        ranks hold different numbers (see
        :meth:`tmpi_adapters.pytensor.DistributedUpdates.batches`).

        Raises:
            ValueError: for the gradient exchange (``mode='grads'``): shard
                the data evenly (:func:`tmpi_core.shard`) or use
                ``mode='params'``.
        """
        if self.updates is None:
            raise ValueError(
                "batches() needs a rule that exchanges updates; with "
                "mode='grads' shard the data evenly (tmpi_core.shard)")
        return self.updates.batches(batches)

    def finalize(self):
        """Give every rank the rule's final model (collective; once, after
        training).

        ``'updates'``: the adapter's ``finalize`` (BSP: the average; EASGD:
        the center; GoSGD: the weighted consensus). ``'grads'``: the
        parameters are already equal; batch norm's running statistics, kept
        per rank, are averaged so that every rank evaluates the same model.
        """
        if self.updates is not None:
            self.updates.finalize()
            return
        if self.exchange == "grads":
            state = self.model.state
            if state:
                from tmpi_core import get_context

                ctx = get_context(self._comm)
                values = [v.get_value() for v in state]
                flat = np.concatenate([v.ravel() for v in values]).astype(
                    np.float64)
                ctx.allreduce_sum(flat)
                flat /= ctx.size
                offset = 0
                for var, value in zip(state, values):
                    n = value.size
                    var.set_value(flat[offset:offset + n].reshape(
                        value.shape).astype(value.dtype))
                    offset += n
            if self._recorder is not None:
                self._recorder.close()


class ValStep:
    """A compiled inference pass: ``val(x, y) -> (loss, accuracy)``.

    Made by :meth:`Model.val_step`; ``evaluate`` goes over a whole set.
    """

    def __init__(self, model, function):
        self.model = model
        self.function = function

    def __call__(self, x, y):
        """Mean loss and accuracy over the batch ``(x, y)``."""
        x, y = self.model.check_batch(x, y)
        loss, acc = self.function(x, y)
        return float(loss), float(acc)

    def evaluate(self, x, y, *, batch_size=256):
        """Sums over ``(x, y)`` in batches: ``(loss_sum, correct, n)``, to
        combine across ranks before dividing."""
        loss_sum = correct = 0.0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            loss, acc = self(xb, yb)
            loss_sum += loss * len(xb)
            correct += acc * len(xb)
        return loss_sum, correct, len(x)
