"""What the Theano and PyTensor adapters share: an exchange Op in the graph.

Both libraries build symbolic graphs over shared variables and compile them
with ``function(..., updates=...)``. tmpi inserts one Op whose ``perform``
hands the values of a whole list of tensors to a tmpi rule and returns the
rule's result: one fused collective per call of the compiled function, not
one per parameter. The public modules (:mod:`tmpi_adapters.lasagne`,
:mod:`tmpi_adapters.pytensor`) bind this to their library.
"""

import collections
import functools
import warnings

import numpy as np

from tmpi_core import (Recorder, broadcast_arrays, check_same_across_ranks,
                       describe_arrays, get_context, make_recorder, make_rule)

__all__ = []


class GraphLib:
    """The handful of names that differ between Theano and PyTensor."""

    def __init__(self, name):
        self.name = name
        if name == "theano":
            import theano
            from theano import gof

            self.Op, self.Apply = gof.Op, gof.Apply
            self.as_tensor = theano.tensor.as_tensor_variable
            self.SharedVariable = theano.compile.SharedVariable
            self.Variable = gof.Variable
        elif name == "pytensor":
            import pytensor
            from pytensor.graph.basic import Apply, Variable
            from pytensor.graph.op import Op

            self.Op, self.Apply, self.Variable = Op, Apply, Variable
            self.as_tensor = pytensor.tensor.as_tensor_variable
            self.SharedVariable = pytensor.compile.SharedVariable
            # PyTensor's numba linker runs Ops without a numba kernel in
            # object mode and says so each compile; for an Op whose work is
            # an MPI call that is the right mode, not news.
            warnings.filterwarnings(
                "ignore", message="Numba will use object mode to run "
                "TMPIExchange", category=UserWarning)
        else:  # pragma: no cover - internal
            raise ValueError(name)
        self.ExchangeOp = _exchange_op_class(self)


@functools.lru_cache(maxsize=None)
def graph_lib(name):
    """The :class:`GraphLib` for ``'theano'`` or ``'pytensor'`` (cached)."""
    return GraphLib(name)


def _exchange_op_class(lib):
    class TMPIExchange(lib.Op):
        """Graph Op: outputs = ``exchange(inputs)``, run by a tmpi rule.

        Equality is identity, so the graph optimiser never merges two
        different exchanges. Outputs are fresh arrays, never views of the
        rule's fused buffer (which the next call overwrites).
        """

        def __init__(self, exchange, label):
            self.exchange = exchange
            self.label = label

        def __eq__(self, other):
            return self is other

        def __hash__(self):
            return id(self)

        def __str__(self):
            return f"TMPIExchange{{{self.label}}}"

        def make_node(self, *inputs):
            inputs = [lib.as_tensor(i) for i in inputs]
            return lib.Apply(self, inputs, [i.type() for i in inputs])

        def __reduce__(self):
            # A pickled graph (Blocks pickles its main loop with the
            # compiled function in it) keeps the Op, not the rule it runs.
            return _detached_exchange, (lib.name, self.label)

        def perform(self, node, inputs, output_storage, params=None):
            if self.exchange is None:
                raise RuntimeError(
                    f"{self} was unpickled without its tmpi rule, so it "
                    "cannot exchange; build the training function anew "
                    "with tmpi (resume from a tmpi checkpoint)")
            outs = self.exchange(list(inputs))
            for store, out, inp in zip(output_storage, outs, inputs):
                store[0] = np.array(out, dtype=inp.dtype)

        def infer_shape(self, *args):
            # Theano: (node, shapes); PyTensor: (fgraph, node, shapes)
            return args[-1]

        def _not_differentiable(self, *args, **kwargs):
            raise TypeError(
                "a tmpi exchange is not differentiable: apply "
                "distributed()/distributed_grads() after taking gradients")

    # Theano asks Op.grad; PyTensor asks Op.pullback (and warns if an Op
    # defines grad itself).
    name = "grad" if lib.name == "theano" else "pullback"
    setattr(TMPIExchange, name, TMPIExchange._not_differentiable)
    TMPIExchange.__name__ = TMPIExchange.__qualname__ = "TMPIExchange"
    return TMPIExchange


def _detached_exchange(lib_name, label):
    """An unpickled exchange Op: its graph loads, calling it raises."""
    return graph_lib(lib_name).ExchangeOp(None, label)


class DistributedUpdates(collections.OrderedDict):
    """The updates :func:`distributed` returns: an ``OrderedDict`` for
    ``function(updates=...)`` that also carries the rule.

    Attributes:
        rule: the :class:`tmpi_core.Rule` that runs at every call; with
            ``record=``, ``rule.recorder`` is the :class:`tmpi_core.Recorder`.
        synchronised: the shared variables the rule exchanges.
    """

    def record(self, loss=None, *, epoch=None, samples=None, **metrics):
        """Record the step just taken (with ``distributed(..., record=DIR)``).

        Call it on every training rank after each call of the compiled
        function. Writes the step's calc / comm / wait seconds (calc: the
        time since the previous ``record`` less the exchange the Op timed;
        the first step counts from its exchange, so compiling is not
        compute) with ``loss`` and the metrics; :meth:`finalize` writes the
        summary.

        Args:
            loss: the step's loss (what the compiled function returned).
            epoch: the epoch, if you count them.
            samples: samples this step trained on on this rank.
            **metrics: other scalars (``accuracy=0.9``).

        Raises:
            ValueError: without ``record=``, or for a non-scalar metric.

        Example:
            >>> loss = train(xb, yb)
            >>> updates.record(loss=loss, epoch=epoch)
        """
        recorder = self.rule.recorder
        if recorder is None:
            raise ValueError(
                "this DistributedUpdates records nothing; pass "
                "record=RUN_DIR to distributed()")
        recorder.end_step(loss, epoch=epoch, samples=samples, **metrics)

    def serve(self):
        """On an asynchronous rule's server rank, serve until the workers end.

        For ``rule='easgd'`` (asynchronous) rank 0 holds the center and must
        not train: call this on every rank before the training loop and
        train only where it returns False. On the server it blocks until
        every worker has called :meth:`finalize`, writes the center into the
        shared variables and returns True; elsewhere it returns False at once.

        Example:
            >>> if not updates.serve():
            ...     for xb, yb in batches:
            ...         train(xb, yb)
            >>> updates.finalize()
        """
        if self.rule.role != "server":
            return False
        _set_values(self.synchronised, self.rule.serve())
        return True

    def finalize(self):
        """Give every rank the rule's final model (BSP: the average;
        EASGD: the center).

        Call once after training on every rank, e.g. before saving: with
        ``every > 1`` the ranks differ after the last partial period.
        """
        values = self.rule.finalize(
            [v.get_value(borrow=True) for v in self.synchronised])
        _set_values(self.synchronised, values)
        if self.rule.recorder is not None:
            self.rule.recorder.close()
        self.rule.close()

    def batches(self, batches):
        """This rank's batches, ending every rank's epoch at the same step
        when ranks hold different numbers of them.

        A rank that runs out tells the others (one tiny non-blocking
        allreduce per step); under BSP it then runs the compiled function
        on its last batch, marked as no data, and applies the average of
        the ranks that had one, so all stay equal (see
        :class:`tmpi_core.UnevenBatches`). With a checkpointer, use its
        ``batches`` instead, so stop requests share the rounds.

        Example:
            >>> for xb, yb in updates.batches(my_batches):
            ...     train(xb, yb)
        """
        from tmpi_core.uneven import UnevenBatches

        return UnevenBatches(batches, rule=self.rule)


def distributed(lib, updates, rule="bsp", *, params=None, comm=None,
                record=None, **options):
    """``distributed`` for ``lib`` (see :func:`tmpi_adapters.lasagne.distributed`)."""
    pairs = _update_pairs(lib, updates)
    rule = _make_rule(rule, comm, options, default_mode="params")
    rule.context.apply_thread_limit()
    if record is not None:
        rule.recorder = make_recorder(record, comm=comm)
    if rule.exchanges_gradients:
        raise ValueError(
            "distributed(updates) exchanges the updated values; to average "
            "gradients use distributed_grads(grads) before the update rule")
    if params is not None:
        params = _shared_list(lib, params, "params")
        wanted = set(map(id, params))
        unknown = [p for p in params if id(p) not in {id(v) for v, _ in pairs}]
        if unknown:
            raise ValueError(
                f"params {[_name(p) for p in unknown]} have no update in "
                "`updates`; pass the parameters the updates change")
    chosen = [i for i, (v, _) in enumerate(pairs)
              if _is_float(v) and (params is None or id(v) in wanted)]
    if not chosen:
        raise ValueError(
            "updates change no floating-point shared variable: nothing to "
            "synchronise")
    shared = [pairs[i][0] for i in chosen]
    names = [_name(v) for v in shared]
    _set_values(shared, rule.start([v.get_value(borrow=True) for v in shared],
                                   names=names))

    def exchange(arrays):
        out = rule.end_step(arrays)
        return arrays if out is None else out

    op = lib.ExchangeOp(exchange, f"{rule.name}:updates")
    outs = _as_list(op(*[pairs[i][1] for i in chosen]))
    new = DistributedUpdates(pairs)
    for i, out in zip(chosen, outs):
        new[pairs[i][0]] = out
    new.rule = rule
    new.synchronised = shared
    return new


def distributed_grads(lib, grads, rule="bsp", *, params=None, comm=None,
                      record=None, **options):
    """``distributed_grads`` for ``lib`` (see
    :func:`tmpi_adapters.lasagne.distributed_grads`)."""
    if isinstance(grads, (str, bytes)) or not hasattr(grads, "__iter__"):
        raise ValueError(
            f"grads must be a list of symbolic gradients, got "
            f"{type(grads).__name__}")
    grads = list(grads)
    if not grads:
        raise ValueError("grads is empty: nothing to average")
    for i, g in enumerate(grads):
        if not isinstance(g, lib.Variable):
            raise ValueError(
                f"grads[{i}] is a {type(g).__name__}, not a {lib.name} "
                "variable; pass the list T.grad(loss, params) returns")
    rule = _make_rule(rule, comm, options, default_mode="grads")
    rule.context.apply_thread_limit()
    if not rule.exchanges_gradients:
        raise ValueError(
            f"distributed_grads() averages gradients; {rule.title} here "
            "exchanges parameters (mode='params' belongs to "
            "distributed(updates), as do EASGD and GoSGD)")
    if record is not None:
        if not isinstance(record, Recorder):
            raise ValueError(
                f"record={record!r}: distributed_grads() returns plain "
                "gradients, so hold the recorder yourself: rec = "
                "tmpi_core.Recorder(RUN_DIR); distributed_grads(..., "
                "record=rec); rec.end_step(loss=...) per step; rec.close()")
        rule.recorder = record
    if params is not None:
        broadcast(lib, params, _rule=rule)

    def exchange(arrays):
        out = rule.on_gradients(arrays)
        rule.end_step()
        return out

    op = lib.ExchangeOp(exchange, f"{rule.name}:grads")
    return _as_list(op(*grads))


def broadcast(lib, params, *, comm=None, _rule=None):
    """``broadcast`` for ``lib``; with ``_rule``, through its ``start``."""
    params = _shared_list(lib, params, "params")
    values = [p.get_value(borrow=True) for p in params]
    names = [_name(p) for p in params]
    if _rule is not None:
        _set_values(params, _rule.start(values, names=names))
        return
    ctx = get_context(comm)
    ctx.apply_thread_limit()
    check_same_across_ranks(ctx, describe_arrays(values, names), "parameters")
    _set_values(params, broadcast_arrays(ctx, values))


# -- helpers ------------------------------------------------------------------

def _make_rule(rule, comm, options, *, default_mode):
    if "lr_scaling" in options and options["lr_scaling"] is not None:
        raise ValueError(
            "lr_scaling is not applied in compiled graphs; scale the learning "
            "rate you pass to the update rule by the number of ranks "
            "(tmpi_core.get_context().size)")
    if options.get("nonfinite") == "skip":
        raise ValueError(
            "nonfinite='skip' cannot skip an update inside a compiled graph "
            "(zero gradients would still move momentum and Adam); use "
            "nonfinite='raise'")
    if isinstance(rule, str):
        if rule.lower() == "bsp":
            options.setdefault("mode", default_mode)
        options["comm"] = comm
    return make_rule(rule, **options)


def _update_pairs(lib, updates):
    if isinstance(updates, dict):
        # insertion order; the start-up check catches ranks that differ
        pairs = list(updates.items())
    else:
        try:
            pairs = [tuple(p) for p in updates]
        except TypeError:
            raise ValueError(
                "updates must be an OrderedDict {shared_variable: new_value} "
                f"or a list of pairs, got {type(updates).__name__}") from None
    if not pairs:
        raise ValueError("updates is empty: nothing to synchronise")
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"updates[{i}] is not a (variable, value) pair")
        if not isinstance(pair[0], lib.SharedVariable):
            raise ValueError(
                f"updates must be keyed by shared variables; key {i} is a "
                f"{type(pair[0]).__name__} ({pair[0]!r}). "
                "lasagne.layers.get_all_params() or collect_shared_vars() "
                "may help you")
    return pairs


def _shared_list(lib, params, what):
    params = list(params) if not isinstance(params, lib.SharedVariable) \
        else [params]
    for i, p in enumerate(params):
        if not isinstance(p, lib.SharedVariable):
            raise ValueError(
                f"{what}[{i}] is a {type(p).__name__}, not a shared variable; "
                "pass lasagne.layers.get_all_params(network)")
    return params


def _set_values(shared, values):
    for v, val in zip(shared, values):
        v.set_value(np.array(val, dtype=v.dtype))


def _is_float(var):
    return str(var.dtype).startswith("float")


def _name(var):
    return var.name or f"<unnamed {var.dtype}{tuple(var.get_value(borrow=True).shape)}>"


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]
