"""AlexNet or ResNet-50 from tmpi_layers, trained data-parallel by any rule.

Launch (2 ranks, bundled digits upsampled to 32x32)::

    mpiexec -n 2 python zoo/layers_cnn.py --model resnet50 --rule bsp
    mpiexec -n 2 python zoo/layers_cnn.py --model alexnet --rule easgd \\
        --lib theano
    mpiexec -n 3 python zoo/layers_cnn.py --model resnet50 --rule gosgd
    mpiexec -n 4 python zoo/layers_cnn.py --data cifar10 \\
        --data-dir ~/data/cifar-10-batches-py --width 16 --epochs 30
    python zoo/layers_cnn.py --help

The models Theano-MPI reported its speedups on, built with
:mod:`tmpi_layers` (no Lasagne or Keras) on PyTensor (``--lib pytensor``,
numpy 2) or Theano (``--lib theano``), at a width a CPU trains: AlexNet
(``--width`` multiplies its channels and dense units, default 1/8; batch
norm after each convolution unless ``--no-batch-norm``) and
ResNet-50 (bottleneck blocks [3, 4, 6, 3]; ``--width`` is the first stage's
inner width, default 8). ``--rule bsp`` averages gradients
(``--mode params --every k``: parameters every k steps); ``--rule easgd``
(asynchronous: rank 0 is the center's server and does not train;
``--synchronous`` for the all-reduce form) and ``--rule gosgd`` exchange
parameters. Rank 0 prints the compile time, the global loss, accuracy and
samples/s per epoch, and a final line with the test accuracy of the rule's
final model.
"""

import argparse
import json
import os
import sys
import time

# float32 unless the user chose a floatX; keep the flags set so far (the
# environment's BLAS and compile cache, the user's own).
for _var in ("THEANO_FLAGS", "PYTENSOR_FLAGS"):
    _flags = os.environ.get(_var, "")
    if "floatX" not in _flags:
        os.environ[_var] = ",".join(filter(None, [_flags, "floatX=float32"]))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    """Parse and check the flags; a bad value exits with a usage error."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=["alexnet", "resnet50"],
                   default="resnet50")
    p.add_argument("--lib", choices=["pytensor", "theano"], default=None,
                   help="graph library (default: PyTensor if installed)")
    p.add_argument("--rule", choices=["bsp", "easgd", "gosgd"], default="bsp")
    p.add_argument("--width", type=float, default=None,
                   help="alexnet: channel multiplier (default 0.125);\n"
                        "resnet50: first inner width (default 8)")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction,
                   default=True,
                   help="alexnet: batch norm after each convolution\n"
                        "(default on; --no-batch-norm: the original, which\n"
                        "needs a smaller --lr)")
    p.add_argument("--compile", choices=["optimized", "quick"],
                   default="optimized",
                   help="optimized: the library's rewrites and C linker\n"
                        "(minutes for ResNet-50, fast steps); quick: no\n"
                        "rewrites, the Python linker (seconds, slower steps)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--mode", choices=["grads", "params"], default="grads",
                   help="--rule bsp: average gradients or parameters")
    p.add_argument("--every", type=int, default=1,
                   help="--rule bsp --mode params: every k steps")
    p.add_argument("--tau", type=int, default=4, help="EASGD's period")
    p.add_argument("--synchronous", action="store_true",
                   help="EASGD's synchronous (all-reduce) form")
    p.add_argument("--gossip-p", type=float, default=0.25,
                   help="GoSGD's push probability per step")
    p.add_argument("--data", choices=["digits", "cifar10", "mnist"],
                   default="digits",
                   help="digits: bundled with scikit-learn (default);\n"
                        "cifar10: CIFAR-10 python batches in --data-dir;\n"
                        "mnist: (Fashion-)MNIST IDX files in --data-dir")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None,
                   help="use only the first N training samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--history", default=None,
                   help="write the per-epoch logs (rank 0) to this JSON file")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "every", "tau"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must "
                    "be >= 1")
    if args.width is not None and args.width <= 0:
        p.error(f"--width={args.width} must be > 0")
    if args.model == "resnet50" and args.width is not None \
            and args.width != int(args.width):
        p.error(f"--width={args.width}: ResNet-50's width is an integer")
    if args.every > 1 and (args.rule != "bsp" or args.mode != "params"):
        p.error("--every needs --rule bsp --mode params")
    return args


def rule_options(args):
    """The rule's options from the flags."""
    if args.rule == "bsp":
        return {"mode": args.mode, **({"every": args.every}
                                      if args.mode == "params" else {})}
    if args.rule == "easgd":
        return {"tau": args.tau, "synchronous": args.synchronous}
    return {"p": args.gossip_p, "seed": args.seed}


def to_images(x, side=32):
    """NHWC images -> NCHW, nearest-neighbour resized to ``side``."""
    import numpy as np

    rows = np.arange(side) * x.shape[1] // side
    cols = np.arange(side) * x.shape[2] // side
    return np.ascontiguousarray(x[:, rows][:, :, cols].transpose(0, 3, 1, 2))


def main(argv=None):
    """Train on every rank; rank 0 reports. Returns the test accuracy."""
    args = parse_args(argv)
    import numpy as np

    from tmpi_core import get_context, load_dataset, shard
    from tmpi_layers import Model, models

    ctx = get_context()
    ctx.apply_thread_limit()
    rank, size = ctx.rank, ctx.size
    try:
        (x_tr, y_tr), (x_te, y_te) = load_dataset(args.data, args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    if args.limit:
        x_tr, y_tr = x_tr[:args.limit], y_tr[:args.limit]
    classes = int(max(y_tr.max(), y_te.max())) + 1
    mean, std = x_tr.mean(axis=(0, 1, 2)), x_tr.std(axis=(0, 1, 2)) + 1e-7
    x_tr, y_tr = shard((to_images((x_tr - mean) / std), y_tr), rank, size)
    x_te, y_te = shard((to_images((x_te - mean) / std), y_te), rank, size)
    if args.model == "alexnet":
        net = models.alexnet(classes, width=args.width or 0.125,
                             batch_norm=args.batch_norm)
    else:
        net = models.resnet50(classes, width=int(args.width or 8))
    model = Model(net, x_tr.shape[1:], lib=args.lib, seed=args.seed + rank,
                  compile=args.compile)
    options = rule_options(args)
    if rank == 0:
        print(f"{model.name} on {model.lib.name}: {model.count_params():,} "
              f"parameters, {size} rank(s) x batch {args.batch_size}, "
              f"{len(x_tr)} samples per rank, rule {args.rule} {options}",
              flush=True)
    start = time.perf_counter()
    step = model.train_step(args.rule, lr=args.lr, momentum=args.momentum,
                            weight_decay=args.weight_decay, **options)
    val = model.val_step()
    ctx.barrier()
    compile_s = time.perf_counter() - start
    if rank == 0:
        print(f"compile: {compile_s:.1f} s", flush=True)

    def test_metrics():
        sums = np.array(val.evaluate(x_te, y_te), np.float64)
        ctx.allreduce_sum(sums)
        return sums[0] / sums[2], sums[1] / sums[2]

    rng = np.random.RandomState(args.seed + rank)
    history = {"loss": [], "accuracy": [], "samples_per_s": []}
    steps = len(x_tr) // args.batch_size
    first_worker = 1 if args.rule == "easgd" and not args.synchronous \
        and size > 1 else 0
    served = step.serve()          # EASGD's server: until the workers end
    train_s = 0.0
    for epoch in range(1, 0 if served else args.epochs + 1):
        order = rng.permutation(len(x_tr))
        sums = np.zeros(3)
        tick = time.perf_counter()
        for k in range(steps):
            idx = order[k * args.batch_size:(k + 1) * args.batch_size]
            loss, acc = step(x_tr[idx], y_tr[idx])
            sums += (loss * len(idx), acc * len(idx), len(idx))
        seconds = time.perf_counter() - tick
        train_s += seconds
        speed = sums[2] / seconds
        for key, value in zip(history, (sums[0] / sums[2], sums[1] / sums[2],
                                        speed)):
            history[key].append(float(value))
        # EASGD's server trains not: the first worker reports (no per-epoch
        # collective, which the server would not join)
        if rank == first_worker:
            print(f"epoch {epoch}/{args.epochs} rank {rank}: loss "
                  f"{history['loss'][-1]:.4f} acc "
                  f"{history['accuracy'][-1]:.4f} samples/s {speed:.1f}",
                  flush=True)
    step.finalize()                 # every rank: the rule's final model
    test_loss, test_acc = test_metrics()
    # samples/s of all ranks together: the sum of the training ranks' rates
    rate = np.array([0.0 if served else
                     steps * args.batch_size * args.epochs / train_s])
    ctx.allreduce_sum(rate)
    if rank == 0:
        print(f"final: test_accuracy={test_acc:.4f} test_loss={test_loss:.4f}"
              f" samples/s={rate[0]:.1f} ranks={size} rule={args.rule}",
              flush=True)
        if args.history:
            with open(args.history, "w") as f:
                json.dump({"history": history, "test": {
                    "accuracy": float(test_acc), "loss": float(test_loss)},
                    "samples_per_s": float(rate[0]), "ranks": size,
                    "compile_s": compile_s, "args": vars(args)}, f)
    return float(test_acc)


if __name__ == "__main__":
    main()
