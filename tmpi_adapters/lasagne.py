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

_api = _graph.public_api("theano", module=__name__,
                         function="theano.function", grad="T.grad")
distributed = _api["distributed"]
distributed_grads = _api["distributed_grads"]
broadcast = _api["broadcast"]
