"""Train the test MLP with TMPISync on every rank and dump what happened.

Run by tests/test_keras_bsp.py as ``mpiexec -n P python keras_fit.py --out DIR
[options]``; each rank writes ``DIR/rank{r}.json`` with its final weights,
its history and the learning rate it used at every step. With ``--configs``
one job trains several configurations in turn (tests/mpirun.py's
``run_mpi_configs``), each from a fresh model, optimizer and callback.
"""

import argparse
import json
import os

import keras
import numpy as np

import tmpi_adapters.keras as tmpi_keras
from kmodels import compile_model, make_data, make_model, make_optimizer
from mpirun import fit_each_config

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--optimizer", default="momentum")
p.add_argument("--mode", default="grads")
p.add_argument("--every", type=int, default=1)
p.add_argument("--batch", type=int, default=8, help="per rank")
p.add_argument("--n", type=int, default=160)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--fits", type=int, default=1, help="repeat fit this often")
p.add_argument("--batchnorm", action="store_true")
p.add_argument("--lr-scaling", default=None)
p.add_argument("--warmup-steps", type=int, default=0)
p.add_argument("--strategy", default="ar")
p.add_argument("--rule", default="bsp")
p.add_argument("--options", default="{}", help="JSON options of --rule")
p.add_argument("--accumulate", type=int, default=None,
               help="the optimizer's gradient_accumulation_steps")
p.add_argument("--overlap", action="store_true",
               help="TMPISync(overlap=True, bucket_mb=0.001): many buckets")


class RecordLR(keras.callbacks.Callback):
    """The learning rate at every batch begin. Through ``self.model``, which
    on JAX puts the step's state (the learning rate among it) into the
    model's variables first."""

    def __init__(self, lrs):
        super().__init__()
        self.lrs = lrs

    def on_train_batch_begin(self, batch, logs=None):
        self.lrs.append(float(self.model.optimizer.learning_rate.numpy()))


def train(args):
    """One configuration: train, evaluate, write DIR/rank{r}.json."""
    rank = tmpi_keras.rank()
    x, y = make_data(args.n)
    xv, yv = make_data(args.n // 2, seed=1)
    x, y = tmpi_keras.shard((x, y))
    xv, yv = tmpi_keras.shard((xv, yv))

    # Ranks start from different weights: TMPISync must broadcast rank 0's.
    model = compile_model(make_model(100 + rank, batchnorm=args.batchnorm),
                          make_optimizer(args.optimizer,
                                         accumulate=args.accumulate))
    lrs = []
    record_lr = RecordLR(lrs)
    if args.rule == "bsp":
        sync = tmpi_keras.TMPISync("bsp", mode=args.mode, every=args.every,
                                   lr_scaling=args.lr_scaling,
                                   warmup_steps=args.warmup_steps,
                                   strategy=args.strategy,
                                   overlap=args.overlap, bucket_mb=0.001)
    else:
        sync = tmpi_keras.TMPISync(args.rule, **json.loads(args.options))
    initial = [np.asarray(w).tolist() for w in model.get_weights()]
    exchanges = []      # count the gradient exchanges (test instrumentation)
    _exchange = sync.rule.on_gradients
    sync.rule.on_gradients = lambda grads: (exchanges.append(1),
                                            _exchange(grads))[1]
    histories = []
    for _ in range(args.fits):
        h = model.fit(x, y, batch_size=args.batch, epochs=args.epochs,
                      shuffle=False, validation_data=(xv, yv),
                      callbacks=[sync, record_lr], verbose=0)
        histories.append(h.history)
    evaluation = model.evaluate(xv, yv, batch_size=args.batch,
                                callbacks=[sync], verbose=0, return_dict=True)
    local_eval = model.evaluate(xv, yv, batch_size=args.batch, verbose=0,
                                return_dict=True)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({
            "weights": [np.asarray(w).tolist() for w in model.get_weights()],
            "initial": initial,
            "role": sync.rule.role,
            "histories": histories,
            "lrs": lrs,
            "evaluate": evaluation,
            "local_evaluate": local_eval,
            "threads": sync.ctx.threads,
            "exchanges": len(exchanges),
            "torch_threads": (__import__("torch").get_num_threads()
                              if keras.backend.backend() == "torch"
                              else None),
        }, f)


fit_each_config(p, train, tmpi_keras.rank)
