"""Wide-ResNet trained data-parallel with Keras 3 and ``TMPISync``.

Launch (2 ranks, bundled digits, about a minute on a laptop)::

    mpiexec -n 2 python zoo/keras_wresnet.py
    mpiexec -n 2 python zoo/keras_wresnet.py --backend jax
    mpiexec -n 4 python zoo/keras_wresnet.py --depth 16 --width 4 \\
        --data cifar10 --data-dir ~/data/cifar-10-batches-py --epochs 30
    python zoo/keras_wresnet.py --help

Wide residual networks (Zagoruyko & Komodakis 2016): ``depth = 6n + 4``,
three groups of ``n`` pre-activation basic blocks of widths ``16k, 32k,
64k``. Each rank trains on its shard of the data with per-rank batch
``--batch-size``; rank 0 prints global loss and accuracy per epoch and a
final line with test accuracy and samples/s.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from keras_backend import BACKENDS, backend_from_argv  # noqa: E402

backend_from_argv()     # before import keras

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tmpi_adapters.keras as tmpi_keras  # noqa: E402
from tmpi_core import load_dataset  # noqa: E402


def wide_resnet(input_shape, classes, *, depth=10, width=2, dropout=0.0,
                weight_decay=5e-4):
    """Build WRN-``depth``-``width`` (pre-activation basic blocks).

    Args:
        input_shape: ``(H, W, C)``.
        classes: number of output classes.
        depth: ``6n + 4`` (10, 16, 22, 28, ...).
        width: widening factor ``k``.
        dropout: dropout rate between the two convolutions of a block.
        weight_decay: L2 factor on convolution and dense kernels.

    Returns:
        keras.Model producing logits.

    Raises:
        ValueError: if ``depth`` is not ``6n + 4`` or ``width < 1``.
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"--depth={depth} must be 6n+4 with n >= 1 "
                         "(10, 16, 22, 28, ...)")
    if width < 1:
        raise ValueError(f"--width={width} must be >= 1")
    n = (depth - 4) // 6
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None

    def conv(filters, kernel, stride=1):
        return keras.layers.Conv2D(filters, kernel, strides=stride,
                                   padding="same", use_bias=False,
                                   kernel_initializer="he_normal",
                                   kernel_regularizer=reg)

    def block(x, filters, stride):
        pre = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
        shortcut = x
        if stride != 1 or x.shape[-1] != filters:
            shortcut = conv(filters, 1, stride)(pre)
        y = conv(filters, 3, stride)(pre)
        y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
        if dropout:
            y = keras.layers.Dropout(dropout)(y)
        y = conv(filters, 3)(y)
        return keras.layers.Add()([shortcut, y])

    inputs = keras.Input(input_shape)
    x = conv(16, 3)(inputs)
    for group, filters in enumerate((16 * width, 32 * width, 64 * width)):
        for i in range(n):
            x = block(x, filters, stride=2 if group and i == 0 else 1)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name=f"wrn_{depth}_{width}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS,
                   default=os.environ.get("KERAS_BACKEND", "torch"),
                   help="Keras backend (default: $KERAS_BACKEND, else torch)")
    p.add_argument("--depth", type=int, default=10, help="6n+4 (default 10)")
    p.add_argument("--width", type=int, default=2, help="widening factor k")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.05,
                   help="SGD learning rate (before --lr-scaling)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--rule", default="bsp", help="tmpi rule (default bsp)")
    p.add_argument("--mode", default="grads", choices=["grads", "params"],
                   help="BSP: average gradients or parameters")
    p.add_argument("--every", type=int, default=1,
                   help="BSP params mode: average every k steps")
    p.add_argument("--lr-scaling", choices=["linear"], default=None,
                   help="scale lr by the number of ranks after a warm-up")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--strategy", default="auto",
                   choices=["auto", "ar", "asa16", "shm", "hier", "hier16"],
                   help="bsp's exchanger: auto (default: shm when every "
                        "rank is on one host, ar with one rank per host, "
                        "else hier), ar (MPI Allreduce), asa16 (fp16 on the "
                        "wire), shm (MPI shared memory), hier (shared memory "
                        "within hosts, ar between) or hier16 (asa16 between)")
    p.add_argument("--data", choices=["digits", "cifar10", "mnist"],
                   default="digits",
                   help="digits: bundled with scikit-learn (default);\n"
                        "cifar10: CIFAR-10 python batches in --data-dir;\n"
                        "mnist: (Fashion-)MNIST IDX files in --data-dir")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None,
                   help="write the trained model (rank 0) to this .keras file")
    p.add_argument("--record", default=None, metavar="RUN_DIR",
                   help="record every step's calc / comm / wait, loss and "
                        "accuracy in RUN_DIR (plot: tmpi-report RUN_DIR)")
    p.add_argument("--history", default=None,
                   help="write the per-epoch global logs and the final "
                        "figures (rank 0) to this JSON file")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must "
                    "be >= 1")
    if args.warmup_epochs < 0:
        p.error(f"--warmup-epochs={args.warmup_epochs} must be >= 0")
    if not 0.0 <= args.dropout < 1.0:
        p.error(f"--dropout={args.dropout} must lie in [0, 1)")
    if args.rule != "bsp" and (args.lr_scaling or args.mode != "grads"
                               or args.every != 1 or args.strategy != "auto"):
        p.error(f"--lr-scaling, --mode, --every and --strategy are options "
                f"of the bsp rule, not of --rule {args.rule}")
    return args


def main(argv=None):
    args = parse_args(argv)
    rank, size = tmpi_keras.rank(), tmpi_keras.size()
    keras.utils.set_random_seed(args.seed + rank)
    try:
        (x_tr, y_tr), (x_te, y_te) = load_dataset(args.data, args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    classes = int(max(y_tr.max(), y_te.max())) + 1
    x_tr, y_tr = tmpi_keras.shard((x_tr, y_tr))
    x_te, y_te = tmpi_keras.shard((x_te, y_te))

    model = wide_resnet(x_tr.shape[1:], classes, depth=args.depth,
                        width=args.width, dropout=args.dropout)
    model.compile(
        optimizer=keras.optimizers.SGD(args.lr, momentum=args.momentum,
                                       nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    steps = -(-len(x_tr) // args.batch_size)
    options = {}
    if args.rule == "bsp":
        options = dict(mode=args.mode, every=args.every,
                       strategy=args.strategy, lr_scaling=args.lr_scaling,
                       warmup_steps=int(args.warmup_epochs * steps))
    sync = tmpi_keras.TMPISync(args.rule, record=args.record, **options)
    if rank == 0:
        print(f"{model.name}: {model.count_params():,} parameters, {size} "
              f"rank(s) x batch {args.batch_size}, {len(x_tr)} samples per "
              f"rank, {steps} steps per epoch, {sync.ctx.threads} thread(s) "
              "per rank", flush=True)

    # Ranks finish importing and building at different times: start the
    # clock together, or samples/s counts rank 0 waiting for the others.
    sync.ctx.barrier()
    start = time.perf_counter()
    clock = TrainClock()
    history = model.fit(x_tr, y_tr, batch_size=args.batch_size,
                        epochs=args.epochs, validation_data=(x_te, y_te),
                        callbacks=[clock, sync], verbose=tmpi_keras.verbose(2))
    elapsed = time.perf_counter() - start
    test = model.evaluate(x_te, y_te, batch_size=256, callbacks=[sync],
                          verbose=0, return_dict=True)
    if rank == 0:
        samples = len(x_tr) * size * args.epochs
        print(f"final: test_accuracy={test['accuracy']:.4f} "
              f"test_loss={test['loss']:.4f} samples/s={samples / elapsed:.1f} "
              f"ranks={size} wall_s={elapsed:.1f}", flush=True)
        if args.save:
            model.save(args.save)
        if args.history:
            with open(args.history, "w") as f:
                json.dump({"history": history.history, "test": test,
                           "ranks": size, "samples_per_s": samples / elapsed,
                           "wall_s": elapsed,
                           "train_samples_per_s": samples / clock.seconds,
                           "samples_per_rank": len(x_tr),
                           "steps_per_epoch": steps,
                           "exchange_bytes": exchange_bytes(model),
                           "args": vars(args)}, f)
    return test


class TrainClock(keras.callbacks.Callback):
    """Seconds spent in the training part of each epoch (from its start
    to its validation, or to its end without one) in ``seconds``."""

    def __init__(self):
        super().__init__()
        self.seconds, self._tick = 0.0, None

    def on_epoch_begin(self, epoch, logs=None):
        self._tick = time.perf_counter()

    def _stop(self):
        if self._tick is not None:
            self.seconds += time.perf_counter() - self._tick
            self._tick = None

    def on_test_begin(self, logs=None):
        self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self._stop()


def exchange_bytes(model):
    """Bytes of the trainable weights: what gradient averaging moves per
    step."""
    return int(sum(np.prod(w.shape) * np.dtype(w.dtype).itemsize
                   for w in model.trainable_weights))


if __name__ == "__main__":
    main()
