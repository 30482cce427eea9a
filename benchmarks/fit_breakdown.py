"""Where the wall time of a data-parallel Keras ``fit`` goes, per rank count.

    mpiexec -n 1 python benchmarks/fit_breakdown.py
    mpiexec -n 2 python benchmarks/fit_breakdown.py --epochs 3 --json b2.json
    python benchmarks/fit_breakdown.py --help

Trains the Wide-ResNet of ``zoo/keras_wresnet.py`` (default WRN-16-4) on
the bundled digits exactly as that script does (its shard, batch,
optimizer, ``TMPISync('bsp')`` and per-epoch validation), with a timing
callback after ``TMPISync``, and splits ``fit``'s wall time (what the zoo
script's samples/s divides by) into:

* **start**: from calling ``fit`` to the end of the first training step
  (``fit``'s set-up, ``TMPISync``'s start-of-training checks and
  broadcast, the first step's one-off costs);
* **steps**: the other training steps, from the previous batch end (or
  the epoch's begin) to the batch end;
* **validation**: each epoch's evaluation of the test shard;
* **rest**: epoch ends (metric averaging), ``fit``'s end (the final
  averaging), and anything between.

Rank 0 prints the seconds and shares, and the steps' median. Compare a run
on 1 rank with one on 2: the steps halve, what does not halve caps the
speedup of short runs.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TMPI_NUM_THREADS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "zoo"))

import keras  # noqa: E402

import tmpi_adapters.keras as tmpi_keras  # noqa: E402
from tmpi_adapters.keras import _bridge  # noqa: E402
from tmpi_core import get_context, load_dataset  # noqa: E402
from keras_wresnet import wide_resnet  # noqa: E402


class Clock(keras.callbacks.Callback):
    """Timestamps of the fit's events (perf_counter seconds)."""

    def __init__(self):
        super().__init__()
        self.batch_ends, self.test = [], []
        self._test_begin = None

    def on_train_batch_end(self, batch, logs=None):
        self.batch_ends.append(time.perf_counter())

    def on_test_begin(self, logs=None):
        self._test_begin = time.perf_counter()

    def on_test_end(self, logs=None):
        self.test.append(time.perf_counter() - self._test_begin)

    def on_epoch_begin(self, epoch, logs=None):
        # a new epoch's first step counts from here, not from the last
        # batch end (the validation and the epoch end lie between)
        self.batch_ends.append(-time.perf_counter())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    ctx = get_context()
    _bridge.set_framework_threads(ctx.apply_thread_limit())
    keras.utils.set_random_seed(ctx.rank)
    (x_tr, y_tr), (x_te, y_te) = load_dataset("digits")
    x_tr, y_tr = tmpi_keras.shard((x_tr, y_tr))
    x_te, y_te = tmpi_keras.shard((x_te, y_te))
    model = wide_resnet(x_tr.shape[1:], 10, depth=args.depth,
                        width=args.width)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    clock = Clock()
    ctx.barrier()
    t0 = time.perf_counter()
    model.fit(x_tr, y_tr, batch_size=args.batch_size, epochs=args.epochs,
              validation_data=(x_te, y_te),
              callbacks=[tmpi_keras.TMPISync("bsp"), clock], verbose=0)
    total = time.perf_counter() - t0
    ends = clock.batch_ends                 # epoch begins are negative
    first = next(t for t in ends if t > 0)
    steps = [b - abs(a) for a, b in zip(ends, ends[1:]) if b > 0]
    steps = steps[1:]                       # the first step is in start
    parts = {"start": first - t0, "steps": sum(steps),
             "validation": sum(clock.test)}
    parts["rest"] = total - sum(parts.values())
    everyone = ctx.allgather({"total": total, **parts})
    if ctx.rank == 0:
        worst = max(everyone, key=lambda d: d["total"])
        n = len(x_tr) * ctx.size * args.epochs
        print(f"wrn_{args.depth}_{args.width} on digits, {ctx.size} rank(s) "
              f"x batch {args.batch_size}, {args.epochs} epochs: fit "
              f"{worst['total']:.2f} s, {n / worst['total']:.1f} samples/s "
              f"(slowest rank)")
        for key in ("start", "steps", "validation", "rest"):
            print(f"  {key:<11} {worst[key]:>7.2f} s "
                  f"{100 * worst[key] / worst['total']:>5.1f} %")
        print(f"  {len(steps)} steps after the first, median "
              f"{1e3 * statistics.median(steps):.1f} ms")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ranks": ctx.size, "epochs": args.epochs,
                           "samples_per_s": n / worst["total"], **worst,
                           "median_step_s": statistics.median(steps)}, f)


if __name__ == "__main__":
    main()
