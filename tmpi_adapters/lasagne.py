"""Theano / Lasagne adapter: synchronise the updates you already compile.

Usage::

    import tmpi_adapters.lasagne as tmpi_lasagne

    # parameter averaging after every update (Theano-MPI's BSP 'avg')
    updates = lasagne.updates.nesterov_momentum(loss, params, 0.01)
    updates = tmpi_lasagne.distributed(updates)
    train = theano.function([x, y], loss, updates=updates)

    # or exact large-batch training with any update rule
    grads = tmpi_lasagne.distributed_grads(T.grad(loss, params), params=params)
    train = theano.function([x, y], loss,
                            updates=lasagne.updates.adam(grads, params))

Launch with ``mpiexec -n 4 python train.py``. Every call of the compiled
function is one step: the exchange runs inside the graph, through one Op whose
``perform`` moves one fused buffer. Works with any Theano graph, Lasagne or
not; :mod:`tmpi_adapters.pytensor` is the same for PyTensor.

Importing this module registers the compatibility alias that lets PyPI's
Lasagne 0.1 import on Theano 1.0 (see :mod:`tmpi_adapters.lasagne_compat`).
"""

from tmpi_adapters import _graph
from tmpi_adapters._graph import DistributedUpdates
from tmpi_adapters.graph_checkpoint import Checkpointer
from tmpi_adapters.lasagne_compat import install_downsample_alias

__all__ = ["Checkpointer", "DistributedUpdates", "broadcast", "distributed",
           "distributed_grads"]

install_downsample_alias()



def distributed(updates, rule="bsp", *, params=None, comm=None, record=None,
                **options):
    """Return ``updates`` that synchronise across ranks at every call.

    The new values of the updated floating-point shared variables (the
    parameters and the update rule's state, e.g. momentum velocities) pass
    through one exchange Op in the Theano graph. With ``rule='bsp'``
    (``mode='params'``) they are averaged every ``every`` calls,
    ``x <- (1/p) sum_i x_i``: for SGD and momentum SGD from equal starts,
    large-batch SGD. Rank 0's current values are broadcast now.

    Args:
        updates: the ``OrderedDict`` an update function returns, or any
            updates dict or list of ``(shared, expression)`` pairs.
        rule: rule name (``'bsp'``, ``'easgd'``, ``'gosgd'``) or a
            :class:`tmpi_core.Rule`.
        params: restrict the exchange to these shared variables (default:
            every floating-point variable the updates change).
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.
        record: a run directory (or a :class:`tmpi_core.Recorder`): the
            exchange is timed and ``updates.record(loss=...)`` after each
            call writes the step; plot with ``tmpi-report RUN_DIR``.
        **options: the rule's options (``every=4``, ``tau=4``).

    Returns:
        DistributedUpdates: an ``OrderedDict`` for
        ``theano.function(updates=...)``; its ``finalize()`` gives every rank
        the rule's final model after training.

    Raises:
        ValueError: for keys that are not shared variables, an unknown rule
            or option, ``mode='grads'`` (use :func:`distributed_grads`), or
            (on every rank) models that differ across ranks.

    Example:
        >>> updates = tmpi_lasagne.distributed(updates, every=4)
        >>> train = theano.function([x, y], loss, updates=updates)
    """
    return _graph.distributed(_graph.graph_lib("theano"), updates, rule,
                              params=params, comm=comm, record=record,
                              **options)


def distributed_grads(grads, rule="bsp", *, params=None, comm=None,
                      record=None, **options):
    """Average symbolic gradients across ranks, before any update rule.

    ``g <- (1/p) sum_i g_i`` in one fused collective per call of the
    compiled function: feeding the result to any update rule (Adam
    included) is exactly large-batch training with batch ``p*b``.

    Args:
        grads: the list ``T.grad(loss, params)`` returns.
        rule: ``'bsp'`` or a :class:`tmpi_core.Rule` that exchanges
            gradients.
        params: the parameters; if given, rank 0's values are broadcast now
            (otherwise call :func:`broadcast` before training).
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.
        record: a :class:`tmpi_core.Recorder` you hold: the exchange is
            timed into it.
        **options: the rule's options (``strategy='asa16'``).

    Returns:
        list of the averaged symbolic gradients, in order.

    Raises:
        ValueError: for non-symbolic input, a rule that does not exchange
            gradients, an unknown option; on every rank at the first call
            when the gradients' shapes differ across ranks.

    Example:
        >>> grads = tmpi_lasagne.distributed_grads(T.grad(loss, params),
        ...                                        params=params)
    """
    return _graph.distributed_grads(_graph.graph_lib("theano"), grads, rule,
                                    params=params, comm=comm, record=record,
                                    **options)


def broadcast(params, *, comm=None):
    """Give every rank rank 0's values of these shared variables.

    Collective: call it on every rank after building (or loading) the model
    and before training, unless :func:`distributed` or
    ``distributed_grads(params=...)`` already did.

    Args:
        params: the model's Theano shared variables.
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.

    Raises:
        ValueError: on every rank when the parameters differ in count,
            shape or dtype across ranks.
    """
    _graph.broadcast(_graph.graph_lib("theano"), params, comm=comm)
