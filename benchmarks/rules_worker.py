"""One training run for benchmarks/rules.py (launched under mpiexec by it).

    mpiexec -n 2 python benchmarks/rules_worker.py --rule gosgd --epochs 2 \\
        --json out.json

Trains a small Keras MLP on the bundled digits with ``TMPISync(rule)`` and
rank 0 writes the final model's test accuracy, the wall time of ``fit`` and
the number of samples the ranks trained on, as JSON.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tmpi_adapters.keras as tmpi_keras  # noqa: E402
from tmpi_core import load_digits  # noqa: E402

RULES = {
    "bsp": ("bsp", {}),
    "easgd": ("easgd", {"tau": 4}),
    "easgd-sync": ("easgd", {"tau": 4, "synchronous": True}),
    "gosgd": ("gosgd", {"p": 0.2, "seed": 0}),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rule", choices=sorted(RULES), default="bsp")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    rank, size = tmpi_keras.rank(), tmpi_keras.size()
    keras.utils.set_random_seed(args.seed + rank)
    (x_tr, y_tr), (x_te, y_te) = load_digits()
    x_tr, y_tr = tmpi_keras.shard((x_tr.reshape(len(x_tr), -1), y_tr))
    x_te = x_te.reshape(len(x_te), -1)
    model = keras.Sequential([keras.Input((64,)),
                              keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.SGD(args.lr, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), metrics=["accuracy"])
    name, options = RULES[args.rule]
    sync = tmpi_keras.TMPISync(name, **options)
    start = time.perf_counter()
    model.fit(x_tr, y_tr, batch_size=args.batch_size, epochs=args.epochs,
              shuffle=True, callbacks=[sync], verbose=0)
    wall = time.perf_counter() - start
    trainers = size - 1 if sync.rule.role != "peer" \
        else size
    if rank == 0:
        # every rank holds the final model (center / consensus / average)
        acc = model.evaluate(x_te, y_te, verbose=0, return_dict=True)
        with open(args.json, "w") as f:
            json.dump({"rule": args.rule, "ranks": size,
                       "epochs": args.epochs, "wall_s": wall,
                       "samples": len(x_tr) * trainers * args.epochs,
                       "test_accuracy": acc["accuracy"]}, f)


if __name__ == "__main__":
    main()
