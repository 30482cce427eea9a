"""The Blocks network, data layout and main loop of the Blocks tests,
shared by the MPI scripts and the single-process references of
tests/test_blocks.py."""

from collections import OrderedDict

import numpy as np

import tmpi_adapters.blocks  # noqa: F401  (the Python 3.11 shims first)
import theano
import theano.tensor as T
from blocks.algorithms import Adam, GradientDescent, Momentum
from blocks.bricks import MLP, Softmax, Tanh
from blocks.bricks.cost import CategoricalCrossEntropy
from blocks.graph import ComputationGraph
from blocks.initialization import Constant, IsotropicGaussian
from blocks.model import Model
from fuel.datasets import IndexableDataset
from fuel.schemes import SequentialScheme
from fuel.streams import DataStream

FEATURES, HIDDEN, CLASSES = 6, 16, 3
STEP_RULES = {"adam": lambda: Adam(learning_rate=0.01),
              "momentum": lambda: Momentum(learning_rate=0.05, momentum=0.9)}


def build(seed, step_rule="adam", hidden=HIDDEN):
    """``(cost, model, algorithm, inputs)``: an MLP whose weights depend on
    ``seed``, its cross-entropy cost, a ``GradientDescent`` on it and the
    input variables ``(features, targets)``."""
    x = T.matrix("features")
    y = T.lvector("targets")
    mlp = MLP([Tanh(), Softmax()], [FEATURES, hidden, CLASSES],
              weights_init=IsotropicGaussian(0.5), biases_init=Constant(0.1))
    mlp.rng = np.random.RandomState(seed)
    mlp.initialize()
    cost = CategoricalCrossEntropy().apply(y, mlp.apply(x)).copy(name="cost")
    params = ComputationGraph(cost).parameters
    algorithm = GradientDescent(cost=cost, parameters=params,
                                step_rule=STEP_RULES[step_rule]())
    return cost, Model(cost), algorithm, (x, y)


def data(steps, batch, ranks, seed=0):
    """``steps * ranks`` batches of ``batch`` rows: batch ``k`` of the
    large-batch reference is rows ``[k*ranks*batch, (k+1)*ranks*batch)``,
    rank ``r``'s own batch ``k`` is its ``r``-th block of ``batch``."""
    rs = np.random.RandomState(seed)
    n = steps * batch * ranks
    x = rs.normal(size=(n, FEATURES)).astype(theano.config.floatX)
    w = rs.normal(size=(FEATURES, CLASSES))
    y = np.argmax(x @ w + 0.5 * rs.normal(size=(n, CLASSES)), axis=1)
    return x, y.astype(np.int64)


def rank_rows(steps, batch, ranks, rank):
    """Row indices of ``rank``'s batches, in order (see :func:`data`)."""
    return np.concatenate([np.arange((k * ranks + rank) * batch,
                                     (k * ranks + rank + 1) * batch)
                           for k in range(steps)]).astype(int)


def stream(x, y, batch):
    """A Fuel stream of ``(features, targets)`` batches of ``batch`` rows."""
    dataset = IndexableDataset(OrderedDict([("features", x), ("targets", y)]))
    return DataStream(dataset,
                      iteration_scheme=SequentialScheme(len(x), batch))


def values(variables):
    """The variables' values as nested lists."""
    return [np.asarray(v.get_value()).tolist() for v in variables]
