"""A Blocks MLP on the bundled digits, trained data-parallel with tmpi.

Launch (2 ranks, about half a minute on a laptop)::

    mpiexec -n 2 python zoo/blocks_mlp.py
    mpiexec -n 4 python zoo/blocks_mlp.py --rule easgd --tau 4 --epochs 20
    mpiexec -n 2 python zoo/blocks_mlp.py --checkpoint runs/blocks_mlp
    python zoo/blocks_mlp.py --help

A plain Blocks program -- bricks, ``GradientDescent`` with Adam, a Fuel
stream, a ``MainLoop`` with ``TrainingDataMonitoring`` and
``DataStreamMonitoring`` -- made data-parallel by one extension,
``tmpi_blocks.TMPISync``, first in the list. Each rank reads its shard of
scikit-learn's 8x8 digits (64 values scaled to [0, 1]); with ``--rule
bsp`` the gradients of each step are averaged over the ranks inside the
compiled Theano function before Adam, so the ranks train one model on
batches of ``ranks * --batch-size``. The training records are means over
the ranks; every rank evaluates the whole test split; one rank prints a
line per epoch (rank 1 under asynchronous EASGD, whose rank 0 serves the
center) and rank 0 a final line. Needs Blocks (installed from its git
repository) and Fuel 0.2.0.

Theano runs in float32 here: ``floatX=float32`` is appended to
``THEANO_FLAGS`` unless the flags already choose a ``floatX``.
"""

import argparse
import os
import sys
import time
from collections import OrderedDict

if "floatX" not in os.environ.get("THEANO_FLAGS", ""):
    os.environ["THEANO_FLAGS"] = ",".join(
        f for f in (os.environ.get("THEANO_FLAGS", ""), "floatX=float32") if f)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tmpi_adapters.blocks as tmpi_blocks  # noqa: E402  (before blocks.*)
import numpy as np  # noqa: E402
import theano  # noqa: E402
import theano.tensor as T  # noqa: E402
from blocks.algorithms import Adam, GradientDescent, Momentum  # noqa: E402
from blocks.bricks import MLP, Rectifier, Softmax  # noqa: E402
from blocks.bricks.cost import (CategoricalCrossEntropy,  # noqa: E402
                                MisclassificationRate)
from blocks.extensions import FinishAfter, SimpleExtension  # noqa: E402
from blocks.extensions.monitoring import (DataStreamMonitoring,  # noqa: E402
                                          TrainingDataMonitoring)
from blocks.graph import ComputationGraph  # noqa: E402
from blocks.initialization import Constant, IsotropicGaussian  # noqa: E402
from blocks.main_loop import MainLoop  # noqa: E402
from blocks.model import Model  # noqa: E402
from fuel.datasets import IndexableDataset  # noqa: E402
from fuel.schemes import SequentialScheme, ShuffledScheme  # noqa: E402
from fuel.streams import DataStream  # noqa: E402

from tmpi_core import get_context, load_digits, shard  # noqa: E402

PIXELS, CLASSES = 64, 10


def parse(argv=None):
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01,
                   help="Adam's learning rate (momentum SGD's for easgd/"
                   "gosgd)")
    p.add_argument("--rule", default="bsp", choices=("bsp", "easgd",
                                                     "gosgd"))
    p.add_argument("--mode", default="grads", choices=("grads", "params"),
                   help="BSP: average gradients or parameters")
    p.add_argument("--tau", type=int, default=4, help="EASGD's period")
    p.add_argument("--checkpoint", default=None,
                   help="tmpi checkpoint directory (resumed from)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "hidden", "tau"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def stream(x, y, batch_size, *, shuffle_seed=None):
    """A Fuel stream of ``(features, targets)`` batches."""
    dataset = IndexableDataset(OrderedDict([("features", x), ("targets", y)]))
    scheme = (SequentialScheme(len(x), batch_size) if shuffle_seed is None
              else ShuffledScheme(len(x), batch_size,
                                  rng=np.random.RandomState(shuffle_seed)))
    return DataStream(dataset, iteration_scheme=scheme)


class EpochLine(SimpleExtension):
    """Prints one line per epoch from the main loop's log (on one rank)."""

    def __init__(self, epochs, printing):
        super().__init__(after_epoch=True)
        self.epochs = epochs
        self.printing = printing

    def do(self, which_callback, *args):
        if not self.printing:
            return
        row = self.main_loop.log.current_row
        epoch = self.main_loop.log.status["epochs_done"]
        fields = " ".join(f"{k}={float(row[k]):.4f}" for k in
                          ("train_cost", "train_error_rate", "test_error_rate")
                          if k in row)
        print(f"epoch {epoch}/{self.epochs}: {fields}", flush=True)


def main(argv=None):
    """Train, print the epochs and a final line; return the test
    accuracy."""
    args = parse(argv)
    ctx = get_context()
    (x_train, y_train), (x_test, y_test) = load_digits()
    floatx = theano.config.floatX
    x_train = x_train.reshape(len(x_train), PIXELS).astype(floatx)
    x_test = x_test.reshape(len(x_test), PIXELS).astype(floatx)
    x_own, y_own = shard((x_train, y_train), ctx.rank, ctx.size)

    x, y = T.matrix("features"), T.lvector("targets")
    mlp = MLP([Rectifier(), Softmax()], [PIXELS, args.hidden, CLASSES],
              weights_init=IsotropicGaussian(0.1), biases_init=Constant(0))
    mlp.rng = np.random.RandomState(args.seed)  # TMPISync broadcasts rank 0's
    mlp.initialize()
    probs = mlp.apply(x)
    cost = CategoricalCrossEntropy().apply(y, probs).copy(name="cost")
    error = MisclassificationRate().apply(y, probs).copy(name="error_rate")
    step_rule = (Adam(learning_rate=args.lr) if args.rule == "bsp"
                 else Momentum(learning_rate=args.lr, momentum=0.9))
    algorithm = GradientDescent(
        cost=cost, parameters=ComputationGraph(cost).parameters,
        step_rule=step_rule)
    options = {"bsp": {"mode": args.mode}, "easgd": {"tau": args.tau},
               "gosgd": {"p": 0.5}}[args.rule]
    sync = tmpi_blocks.TMPISync(args.rule, checkpoint=args.checkpoint,
                                **options)
    main_loop = MainLoop(
        algorithm,
        stream(x_own, y_own, args.batch_size,
               shuffle_seed=args.seed + ctx.rank),
        model=Model(cost),
        extensions=[
            sync,
            TrainingDataMonitoring([cost, error], prefix="train",
                                   after_epoch=True),
            DataStreamMonitoring([error], stream(x_test, y_test, 256),
                                 prefix="test", after_epoch=True,
                                 before_first_epoch=False),
            FinishAfter(after_n_epochs=args.epochs),
            # asynchronous EASGD: rank 0 serves and has no epochs
            EpochLine(args.epochs, ctx.rank == (1 if args.rule == "easgd"
                                                else 0))])
    start = time.perf_counter()
    main_loop.run()
    seconds = time.perf_counter() - start
    # after training every rank holds the final model (BSP: the same one)
    predict = theano.function([x], probs.argmax(axis=1))
    accuracy = float(np.mean(predict(x_test) == y_test))
    if ctx.rank == 0:
        print(f"final: test_accuracy={accuracy:.4f} rule={args.rule} "
              f"ranks={ctx.size} seconds={seconds:.1f}", flush=True)
    return accuracy


if __name__ == "__main__":
    main()
