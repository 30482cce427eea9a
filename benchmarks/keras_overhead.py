"""Per-step cost of ``TMPISync('bsp')`` in Keras against no synchronisation.

Every rank builds the same Wide-ResNet (default WRN-16-4, 32x32x3 inputs,
10 classes: CIFAR-10's shapes, 2.75 M parameters) and trains it with the
same per-rank batch in two ways, alternating in the same process:

* **sync**: ``model.fit(..., callbacks=[TMPISync('bsp'), timer])`` --
  gradients averaged across ranks before every update (the fused exchange);
* **local**: ``model.fit(..., callbacks=[timer])`` -- every rank trains on
  its own, no communication during the steps;
* with ``--overlap``, also **overlap**: ``TMPISync('bsp', overlap=True)``,
  the gradients exchanged bucket by bucket during the backward pass.

The data are synthetic (standard-normal images, uniform labels): a step
costs the same whatever the pixel values. A timer callback records the
time from one ``on_train_batch_end`` to the next (the whole step: forward,
backward, the exchange in the optimizer hook, the update, every callback);
the first step of every ``fit`` is dropped (it includes ``fit``'s set-up
and, for ``sync``, the start-of-training broadcast). Both ways start each
``fit`` after a ``Barrier``, so in ``local`` the ranks compute at the same
time, as they do in ``sync``. The figure is the ratio of the medians of the
slowest rank's step times, sync / local.

Threads: one per rank unless ``TMPI_NUM_THREADS``/``OMP_NUM_THREADS`` say
otherwise (the same count in both ways).

Launch::

    mpiexec -n 2 python benchmarks/keras_overhead.py
    mpiexec -n 2 python benchmarks/keras_overhead.py --backend jax
    mpiexec -n 2 python benchmarks/keras_overhead.py --batch-size 16 \\
        --steps 6 --repeats 6 --json overhead.json
    python benchmarks/keras_overhead.py --help
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TMPI_NUM_THREADS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "zoo"))
from keras_backend import BACKENDS, backend_from_argv  # noqa: E402

backend_from_argv()     # before import keras

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tmpi_adapters.keras as tmpi_keras  # noqa: E402
from tmpi_adapters.keras import _bridge  # noqa: E402
from tmpi_core import get_context  # noqa: E402
from keras_wresnet import wide_resnet  # noqa: E402

__all__ = ["StepTimer", "main"]


class StepTimer(keras.callbacks.Callback):
    """Seconds between consecutive ``on_train_batch_end`` calls of a fit."""

    def __init__(self):
        super().__init__()
        self.steps = []
        self._last = None

    def on_train_begin(self, logs=None):
        self.steps = []
        self._last = None

    def on_train_batch_end(self, batch, logs=None):
        for value in (logs or {}).values():
            np.asarray(value)       # JAX dispatches ahead: wait for the step
        now = time.perf_counter()
        if self._last is not None:
            self.steps.append(now - self._last)
        self._last = now


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=BACKENDS,
                   default=os.environ.get("KERAS_BACKEND", "torch"),
                   help="Keras backend, its default compiled step (default: "
                        "$KERAS_BACKEND, else torch)")
    p.add_argument("--depth", type=int, default=16, help="6n+4 (default 16)")
    p.add_argument("--width", type=int, default=4, help="default 4")
    p.add_argument("--input-size", type=int, default=32,
                   help="square image side (default 32, CIFAR-10)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--steps", type=int, default=6,
                   help="steps per fit; the first of each is dropped "
                        "(default 6)")
    p.add_argument("--repeats", type=int, default=6,
                   help="fits of each way, alternating (default 6)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed fits of each way first (default 1)")
    p.add_argument("--overlap", action="store_true",
                   help="also time TMPISync('bsp', overlap=True)")
    p.add_argument("--bucket-mb", type=float, default=4.0,
                   help="bucket size with --overlap")
    p.add_argument("--json", default=None,
                   help="write the figures (rank 0) to this JSON file")
    p.add_argument("--record", default=None, metavar="RUN_DIR",
                   help="TMPISync(record=RUN_DIR): calc / comm / wait per "
                        "synchronised step (tmpi-report RUN_DIR); adds a "
                        "barrier per step")
    args = p.parse_args(argv)
    for name in ("batch_size", "repeats", "input_size", "channels",
                 "classes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must "
                    "be >= 1")
    if args.steps < 2:
        p.error(f"--steps={args.steps} must be >= 2 (the first step of each "
                "fit is dropped)")
    if args.warmup < 0:
        p.error(f"--warmup={args.warmup} must be >= 0")
    return args


def main(argv=None):
    """Time both ways; print the figures on rank 0 and return them."""
    args = parse_args(argv)
    ctx = get_context()
    # The same threads in both ways (TMPISync would set them only for sync).
    threads = ctx.apply_thread_limit()
    _bridge.set_framework_threads(threads)
    keras.utils.set_random_seed(1 + ctx.rank)
    shape = (args.input_size, args.input_size, args.channels)
    n = args.batch_size * args.steps
    rng = np.random.default_rng(ctx.rank)
    x = rng.standard_normal((n,) + shape, dtype=np.float32)
    y = rng.integers(0, args.classes, n)

    model = wide_resnet(shape, args.classes, depth=args.depth,
                        width=args.width)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    syncs = {"sync": tmpi_keras.TMPISync("bsp", record=args.record)}
    if args.overlap:
        syncs["overlap"] = tmpi_keras.TMPISync(
            "bsp", overlap=True, bucket_mb=args.bucket_mb, strategy="ar")
    timer = StepTimer()
    if ctx.rank == 0:
        print(f"{model.name}: {trainable:,} trainable parameters "
              f"({trainable * 4 / 2**20:.2f} MiB fp32), input {shape}, "
              f"{ctx.size} ranks x batch {args.batch_size}, {args.steps} steps "
              f"per fit, {threads} thread(s) per rank; synthetic data",
              flush=True)

    def fit(way):
        callbacks = [syncs[way], timer] if way in syncs else [timer]
        ctx.barrier()
        model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False,
                  callbacks=callbacks, verbose=0)
        # the slowest rank's time, step by step
        return _max_over_ranks(ctx, timer.steps)

    ways = [*syncs, "local"]
    for _ in range(args.warmup):
        for way in ways:
            fit(way)
    steps = {way: [] for way in ways}
    for i in range(args.repeats):
        for way in (ways if i % 2 == 0 else ways[::-1]):
            steps[way].extend(fit(way))
            if ctx.rank == 0:
                last = steps[way][-(args.steps - 1):]
                print(f"  repeat {i + 1}/{args.repeats} {way:>5}: median "
                      f"step {1e3 * statistics.median(last):.1f} ms",
                      flush=True)
    med = {way: statistics.median(v) for way, v in steps.items()}
    ratio = med["sync"] / med["local"]
    result = {
        "model": model.name, "trainable_parameters": trainable,
        "grad_bytes": trainable * 4, "input_shape": list(shape),
        "ranks": ctx.size, "batch_size": args.batch_size,
        "threads_per_rank": threads, "steps_per_fit": args.steps,
        "repeats": args.repeats,
        "median_step_s": med, "sync_over_local": ratio,
        "step_s": steps,
        "meta": {"keras": keras.__version__, "backend": _bridge.backend_name(),
                 "python": platform.python_version(),
                 "loadavg": os.getloadavg()},
    }
    if "overlap" in med:
        result["overlap_over_local"] = med["overlap"] / med["local"]
        result["overlap_over_sync"] = med["overlap"] / med["sync"]
    if ctx.rank == 0:
        print(f"median step: sync {1e3 * med['sync']:.1f} ms, local "
              f"{1e3 * med['local']:.1f} ms, sync/local {ratio:.3f} "
              f"({len(steps['sync'])} steps each)", flush=True)
        if "overlap" in med:
            print(f"overlap {1e3 * med['overlap']:.1f} ms: overlap/local "
                  f"{result['overlap_over_local']:.3f}, overlap/sync "
                  f"{result['overlap_over_sync']:.3f}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    return result


def _max_over_ranks(ctx, values):
    everyone = ctx.allgather([float(v) for v in values])
    return [max(col) for col in zip(*everyone)]


if __name__ == "__main__":
    main()
