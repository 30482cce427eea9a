"""VGG16 trained data-parallel with Theano + Lasagne and tmpi's graph adapter.

Launch (2 ranks, bundled digits upsampled to 32x32, under a minute on 2
cores once Theano's compile cache is warm; the first compile takes about one
more)::

    mpiexec -n 2 python zoo/lasagne_vgg16.py
    mpiexec -n 2 python zoo/lasagne_vgg16.py --mode params --every 4
    mpiexec -n 4 python zoo/lasagne_vgg16.py --width 0.5 --data cifar10 \\
        --data-dir ~/data/cifar-10-batches-py --epochs 30
    python zoo/lasagne_vgg16.py --help

VGG16 (Simonyan & Zisserman 2015, configuration D): thirteen 3x3
convolutions in five blocks of 2, 2, 3, 3, 3, each block followed by 2x2
max-pooling, then two hidden dense layers and a softmax output. ``--width``
multiplies the standard widths (64, 128, 256, 512, 512 channels, 4096 dense
units). Five poolings need at least 32 px, so images are resized (nearest
neighbour: digits' 8x8 pixels are repeated 4x4) to ``--input-size``, a
multiple of 32, and standardised per channel. Batch normalisation after
every convolution (on by default, as in torchvision's ``vgg16_bn``) makes
the narrow network train in a few epochs; ``--no-batch-norm`` gives the
original, which needs more epochs and is sensitive to the seed and the
learning rate.

``--mode grads`` averages the gradients before Nesterov momentum
(``tmpi_lasagne.distributed_grads``: exactly large-batch SGD with batch
``ranks * --batch-size``); ``--mode params`` lets each rank take its own
step and averages parameters and velocities every ``--every`` steps
(``tmpi_lasagne.distributed``, then ``finalize()``). Rank 0 prints the
compile time, global loss and accuracy per epoch (samples/s counts the
training steps only) and a final line with the test accuracy; ``wall_s`` is
the training loop with its evaluations, without the compile.
"""

import argparse
import json
import os
import sys
import time
import warnings

# float32 unless the user chose a floatX; keep the flags set so far (the
# environment's BLAS and compile cache, the user's own).
_flags = os.environ.get("THEANO_FLAGS", "")
if "floatX" not in _flags:
    os.environ["THEANO_FLAGS"] = ",".join(filter(None, [_flags,
                                                        "floatX=float32"]))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Lasagne 0.1 on Theano 1.0 and setuptools 80: deprecation notices about
# Lasagne's own code, repeated by every rank; nothing a user can act on.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
warnings.filterwarnings("ignore", message="The `image_shape` keyword")

import numpy as np  # noqa: E402
import theano  # noqa: E402
import theano.tensor as T  # noqa: E402
import lasagne  # noqa: E402

import tmpi_adapters.lasagne as tmpi_lasagne  # noqa: E402
from tmpi_core import get_context, load_dataset, shard  # noqa: E402

CHANNELS = (64, 128, 256, 512, 512)
CONVS = (2, 2, 3, 3, 3)
DENSE = 4096


class BatchNormLayer(lasagne.layers.Layer):
    """Batch normalisation (Ioffe & Szegedy 2015), which Lasagne 0.1 lacks.

    ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta`` per channel
    (axis 1), with the batch's statistics in training and running averages
    (``avg <- (1 - alpha) avg + alpha batch``) when ``deterministic=True``.
    The averages move as default updates of every compiled training step
    (Lasagne 0.2's recipe), so each rank keeps its own, like Keras without
    synchronised batch norm.

    Args:
        incoming: the layer below.
        alpha: running-average rate.
        epsilon: added to the variance.
    """

    def __init__(self, incoming, *, alpha=0.1, epsilon=1e-4, **kwargs):
        super().__init__(incoming, **kwargs)
        self.alpha, self.epsilon = alpha, epsilon
        self.axes = (0,) + tuple(range(2, len(self.input_shape)))
        shape = (self.input_shape[1],)
        const = lasagne.init.Constant
        self.beta = self.add_param(const(0.0), shape, "beta",
                                   regularizable=False)
        self.gamma = self.add_param(const(1.0), shape, "gamma",
                                    regularizable=False)
        self.mean = self.add_param(const(0.0), shape, "mean",
                                   trainable=False, regularizable=False)
        self.inv_std = self.add_param(const(1.0), shape, "inv_std",
                                      trainable=False, regularizable=False)

    def get_output_for(self, input, deterministic=False, **kwargs):
        if deterministic:
            mean, inv_std = self.mean, self.inv_std
        else:
            mean = input.mean(self.axes)
            inv_std = T.inv(T.sqrt(input.var(self.axes) + self.epsilon))
            running_mean = self.mean.clone()
            running_mean.default_update = \
                (1 - self.alpha) * running_mean + self.alpha * mean
            running_inv_std = self.inv_std.clone()
            running_inv_std.default_update = \
                (1 - self.alpha) * running_inv_std + self.alpha * inv_std
            # put the clones in the graph so that their updates run
            mean += 0 * running_mean
            inv_std += 0 * running_inv_std
        pattern = ["x"] * input.ndim
        pattern[1] = 0

        def channel(v):
            return v.dimshuffle(pattern)
        return ((input - channel(mean)) * channel(self.gamma * inv_std)
                + channel(self.beta))


def vgg16(input_var, input_shape, classes, *, width=0.125, dropout=0.0,
          batch_norm=True):
    """Build VGG16 (configuration D) in Lasagne.

    Args:
        input_var: symbolic 4-D input, NCHW.
        input_shape: ``(C, H, W)``; ``H`` and ``W`` multiples of 32.
        classes: number of output classes.
        width: multiplier on the channel counts ``64..512`` and the dense
            layers' 4096 units (at least one unit each).
        dropout: dropout rate after each hidden dense layer (0 disables).
        batch_norm: normalise each convolution's output before its ReLU
            (:class:`BatchNormLayer`, whose beta replaces the bias), as
            torchvision's ``vgg16_bn`` does.

    Returns:
        the output layer (softmax probabilities).

    Raises:
        ValueError: if ``width <= 0`` or the image side is not a positive
            multiple of 32.
    """
    if width <= 0:
        raise ValueError(f"--width={width} must be > 0")
    channels, height, side = input_shape
    if height != side or side < 32 or side % 32:
        raise ValueError(
            f"input_shape={tuple(input_shape)}: images must be square with a "
            "side that is a multiple of 32 (--input-size 32, 64, ...): "
            "VGG16's five 2x2 poolings halve the image five times")
    layers = lasagne.layers
    he = lasagne.init.HeNormal(gain="relu")

    def conv(net, filters, name):
        if not batch_norm:
            return layers.Conv2DLayer(net, filters, 3, pad=1, W=he, name=name)
        # no bias (BatchNormLayer's beta) and ReLU after the normalisation
        net = layers.Conv2DLayer(net, filters, 3, pad=1, W=he, b=None,
                                 nonlinearity=lasagne.nonlinearities.identity,
                                 name=name)
        return layers.NonlinearityLayer(BatchNormLayer(net, name=name + "_bn"),
                                        lasagne.nonlinearities.rectify)

    net = layers.InputLayer((None, channels, side, side), input_var)
    for block, (filters, convs) in enumerate(zip(CHANNELS, CONVS), 1):
        for i in range(convs):
            net = conv(net, max(1, round(filters * width)),
                       f"conv{block}_{i + 1}")
        net = layers.MaxPool2DLayer(net, 2, name=f"pool{block}")
    for i in (1, 2):
        net = layers.DenseLayer(net, max(1, round(DENSE * width)), W=he,
                                name=f"fc{i}")
        if dropout:
            net = layers.DropoutLayer(net, p=dropout)
    return layers.DenseLayer(
        net, classes, nonlinearity=lasagne.nonlinearities.softmax, name="out")


def resize(x, size):
    """Nearest-neighbour resize of NHWC images to ``size x size``.

    An integer factor repeats each pixel (8x8 digits to 32x32: 4x4 blocks).
    """
    rows = np.arange(size) * x.shape[1] // size
    cols = np.arange(size) * x.shape[2] // size
    return x[:, rows][:, :, cols]


def to_lasagne(x, y, size, mean, std):
    """NHWC images, int labels -> standardised NCHW floatX, int32.

    ``mean`` and ``std`` are per channel, from the whole training set.
    """
    x = ((resize(x, size) - mean) / std).transpose(0, 3, 1, 2)
    return (np.ascontiguousarray(x, dtype=theano.config.floatX),
            y.astype(np.int32))


def parse_args(argv=None):
    """Parse and check the flags; a bad value exits with a usage error."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--width", type=float, default=0.125,
                   help="multiplier on the channels 64..512 and the 4096 "
                        "dense units\n(default 0.125: 8..64 channels, 512 "
                        "units)")
    p.add_argument("--input-size", type=int, default=32,
                   help="resize images to this square side, a multiple of "
                        "32 (default 32)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout after the hidden dense layers (VGG: 0.5)")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction,
                   default=True,
                   help="batch norm after each convolution (default on;\n"
                        "--no-batch-norm: the original VGG16)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.005,
                   help="Nesterov momentum SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4,
                   help="L2 factor on the weights")
    p.add_argument("--mode", default="grads", choices=["grads", "params"],
                   help="BSP: average gradients or parameters")
    p.add_argument("--every", type=int, default=1,
                   help="--mode params: average every k steps")
    p.add_argument("--data", choices=["digits", "cifar10", "mnist"],
                   default="digits",
                   help="digits: bundled with scikit-learn (default);\n"
                        "cifar10: CIFAR-10 python batches in --data-dir;\n"
                        "mnist: (Fashion-)MNIST IDX files in --data-dir")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--history", default=None,
                   help="write the per-epoch global logs and the final "
                        "figures (rank 0) to this JSON file")
    args = p.parse_args(argv)
    if args.input_size < 32 or args.input_size % 32:
        p.error(f"--input-size={args.input_size} must be a multiple of 32 "
                "(32, 64, ...): VGG16's five 2x2 poolings halve the image "
                "five times")
    if args.width <= 0:
        p.error(f"--width={args.width} must be > 0")
    for name in ("epochs", "batch_size", "every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must "
                    "be >= 1")
    if args.every > 1 and args.mode != "params":
        p.error(f"--every={args.every} needs --mode params: gradients are "
                "averaged every step")
    if not 0.0 <= args.dropout < 1.0:
        p.error(f"--dropout={args.dropout} must lie in [0, 1)")
    return args


def global_means(ctx, sums):
    """Global means from per-rank sums, in one collective.

    Args:
        ctx: the :class:`tmpi_core.Context`.
        sums: this rank's ``[s_1, ..., s_k, n]``: sums over ``n`` samples.

    Returns:
        numpy array ``[S_1 / N, ..., S_k / N]`` of the sums over all ranks.
    """
    total = ctx.allreduce_sum(np.array(sums, dtype=np.float64))
    return total[:-1] / total[-1]


def main(argv=None):
    """Train on every rank; rank 0 reports. Returns the final test accuracy."""
    args = parse_args(argv)
    ctx = get_context()
    ctx.apply_thread_limit()
    rank, size = ctx.rank, ctx.size
    # Per-rank shuffling and dropout; the initial weights are rank 0's,
    # broadcast by tmpi when the updates are built.
    rng = np.random.RandomState(args.seed + rank)
    lasagne.random.set_rng(rng)
    try:
        (x_tr, y_tr), (x_te, y_te) = load_dataset(args.data, args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    classes = int(max(y_tr.max(), y_te.max())) + 1
    # every rank holds the whole training set here: equal statistics
    mean, std = x_tr.mean(axis=(0, 1, 2)), x_tr.std(axis=(0, 1, 2)) + 1e-7
    x_tr, y_tr = to_lasagne(*shard((x_tr, y_tr), rank, size),
                            args.input_size, mean, std)
    x_te, y_te = to_lasagne(*shard((x_te, y_te), rank, size),
                            args.input_size, mean, std)

    x, y = T.tensor4("x"), T.ivector("y")
    net = vgg16(x, x_tr.shape[1:], classes, width=args.width,
                dropout=args.dropout, batch_norm=args.batch_norm)
    params = lasagne.layers.get_all_params(net, trainable=True)
    probs = lasagne.layers.get_output(net)
    loss = lasagne.objectives.categorical_crossentropy(probs, y).mean()
    acc = T.mean(T.eq(T.argmax(probs, axis=1), y), dtype=theano.config.floatX)
    objective = loss
    if args.weight_decay:
        objective = loss + args.weight_decay * \
            lasagne.regularization.regularize_network_params(
                net, lasagne.regularization.l2)
    if args.mode == "grads":
        grads = tmpi_lasagne.distributed_grads(T.grad(objective, params),
                                               params=params)
        updates = lasagne.updates.nesterov_momentum(
            grads, params, args.lr, args.momentum)
    else:
        updates = tmpi_lasagne.distributed(
            lasagne.updates.nesterov_momentum(objective, params, args.lr,
                                              args.momentum),
            every=args.every)
    test_probs = lasagne.layers.get_output(net, deterministic=True)
    correct = T.sum(T.eq(T.argmax(test_probs, axis=1), y))

    n_params = int(lasagne.layers.count_params(net, trainable=True))
    steps = -(-len(x_tr) // args.batch_size)
    name = f"vgg16_w{args.width:g}_{args.input_size}px"
    if rank == 0:
        print(f"{name}: {n_params:,} parameters, {size} rank(s) x batch "
              f"{args.batch_size}, {len(x_tr)} samples per rank, {steps} "
              f"steps per epoch, {ctx.threads} thread(s) per rank, mode "
              f"{args.mode}", flush=True)
    start = time.perf_counter()
    # Ranks compile side by side, sharing Theano's cache (and its lock):
    # the barriers make the times the slowest rank's.
    train = theano.function([x, y], [loss, acc], updates=updates)
    ctx.barrier()
    compile_train = time.perf_counter() - start
    count_correct = theano.function([x, y], correct)
    ctx.barrier()
    compile_s = time.perf_counter() - start
    if rank == 0:
        print(f"compile: train step {compile_train:.1f} s, test "
              f"{compile_s - compile_train:.1f} s", flush=True)

    def test_accuracy():
        hits = sum(int(count_correct(x_te[i:i + 256], y_te[i:i + 256]))
                   for i in range(0, len(x_te), 256))
        return global_means(ctx, [hits, len(x_te)])[0]

    history = {"loss": [], "accuracy": [], "test_accuracy": [],
               "samples_per_s": []}
    train_s = 0.0
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_tr))
        sums = np.zeros(3)
        tick = time.perf_counter()
        for k in range(steps):
            idx = order[k * args.batch_size:(k + 1) * args.batch_size]
            batch_loss, batch_acc = train(x_tr[idx], y_tr[idx])
            sums += (batch_loss * len(idx), batch_acc * len(idx), len(idx))
        seconds = time.perf_counter() - tick
        train_s += seconds
        epoch_loss, epoch_acc = global_means(ctx, sums)
        test_acc = test_accuracy()
        speed = len(x_tr) * size / seconds
        for key, value in zip(history, (epoch_loss, epoch_acc, test_acc,
                                        speed)):
            history[key].append(float(value))
        if rank == 0:
            print(f"epoch {epoch}/{args.epochs} loss {epoch_loss:.4f} acc "
                  f"{epoch_acc:.4f} test_acc {test_acc:.4f} samples/s "
                  f"{speed:.1f}", flush=True)
    if args.mode == "params":
        updates.finalize()       # every rank: the average model
    test_acc = float(test_accuracy())
    elapsed = time.perf_counter() - start
    samples = len(x_tr) * size * args.epochs
    if rank == 0:
        print(f"final: test_accuracy={test_acc:.4f} samples/s="
              f"{samples / train_s:.1f} ranks={size} wall_s={elapsed:.1f}",
              flush=True)
        if args.history:
            with open(args.history, "w") as f:
                json.dump({"history": history,
                           "test": {"accuracy": test_acc},
                           "ranks": size, "parameters": n_params,
                           "exchange_bytes": n_params * np.dtype(
                               theano.config.floatX).itemsize,
                           "samples_per_rank": len(x_tr),
                           "steps_per_epoch": steps,
                           "samples_per_s": samples / train_s,
                           "wall_s": elapsed,
                           "compile_s": {"train": compile_train,
                                         "test": compile_s - compile_train},
                           "args": vars(args)}, f)
    return test_acc


if __name__ == "__main__":
    main()
