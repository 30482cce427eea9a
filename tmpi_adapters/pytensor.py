"""PyTensor adapter: synchronise the updates you already compile.

Usage::

    import tmpi_adapters.pytensor as tmpi_pytensor

    # parameter averaging after every update (Theano-MPI's BSP 'avg')
    updates = {w: w - lr * pt.grad(loss, w)}
    updates = tmpi_pytensor.distributed(updates)
    train = pytensor.function([x, y], loss, updates=updates)

    # or exact large-batch training with any update rule
    grads = tmpi_pytensor.distributed_grads(pt.grad(loss, params),
                                            params=params)
    train = pytensor.function([x, y], loss,
                              updates=my_adam(grads, params))

Launch with ``mpiexec -n 4 python train.py``. Every call of the compiled
function is one step: the exchange runs inside the graph, through one Op whose
``perform`` moves one fused buffer. PyTensor is Theano's maintained
descendant (numpy 2); :mod:`tmpi_adapters.lasagne` is the same for Theano.
"""

from tmpi_adapters import _graph
from tmpi_adapters._graph import DistributedUpdates
from tmpi_adapters.graph_checkpoint import Checkpointer

__all__ = ["Checkpointer", "DistributedUpdates", "broadcast", "distributed",
           "distributed_grads"]

_api = _graph.public_api("pytensor", module=__name__,
                         function="pytensor.function", grad="pt.grad")
distributed = _api["distributed"]
distributed_grads = _api["distributed_grads"]
broadcast = _api["broadcast"]
