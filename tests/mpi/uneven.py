"""Uneven data: ranks with different numbers of batches train BSP together.

Run by tests/test_uneven.py as ``mpiexec -n 3 python uneven.py --out DIR
--entry core|keras|graph [--lib pytensor|theano] --batches 8,17,26``.
Rank r has ``batches[r]`` batches of linear-regression data; every rank
writes ``rank{r}.json`` with its final weights, the steps it ran per epoch
and its own batch count, and the test replays the run serially. With
``--configs`` one job runs several configurations in turn (tests/mpirun.py's
``run_mpi_configs``).
"""

import argparse
import json
import os

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--entry", choices=("core", "keras", "graph", "torch"),
               required=True)
p.add_argument("--lib", default="pytensor")
p.add_argument("--rule", default="bsp")
p.add_argument("--mode", default="grads")
p.add_argument("--batches", default="8,17,26")
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--lr", type=float, default=0.05)

from mpi4py import MPI  # noqa: E402

from mpirun import fit_each_config  # noqa: E402
from uneven_data import DIM, batches_of, initial_weights  # noqa: E402

rank = MPI.COMM_WORLD.Get_rank()
# set by fit() for each configuration
args = counts = mine = None
steps = []                      # steps run per epoch on this rank


def core():
    import tmpi_core

    rule = tmpi_core.make_rule(args.rule, **(
        {"mode": args.mode} if args.rule == "bsp" else {}))
    w = initial_weights(rank)
    (w,) = [np.array(a) for a in rule.start([w])]
    state = tmpi_core.TrainingState(rule, None)
    for _ in range(args.epochs):
        n = 0
        for x, y in state.batches(mine):
            grad = 2.0 * x.T @ (x @ w - y) / len(y)
            if rule.exchanges_gradients:
                out = rule.on_gradients([grad])
                if out is not None:
                    w = w - args.lr * out[0]
                rule.end_step()
            else:
                if rule.has_batch or not rule.lockstep:
                    w = w - args.lr * grad
                out = rule.end_step([w])
                if out is not None:
                    w = np.array(out[0])
            n += 1
        steps.append(n)
    (w,) = [np.array(a) for a in rule.finalize([w])]
    rule.close()
    return w


def keras_fit():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    import tmpi_adapters.keras as tmpi_keras

    model = keras.Sequential([keras.Input((DIM,)),
                              keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(initial_weights(rank))
    model.compile(optimizer=keras.optimizers.SGD(args.lr), loss="mse")
    sync = tmpi_keras.TMPISync(args.rule, **(
        {"mode": args.mode} if args.rule == "bsp" else {}))

    class Count(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.n = 0

        def on_train_batch_end(self, batch, logs=None):
            self.n += 1

        def on_epoch_end(self, epoch, logs=None):
            steps.append(self.n)

    model.fit(sync.uneven(mine), epochs=args.epochs, verbose=0,
              callbacks=[sync, Count()])
    return np.asarray(model.layers[0].kernel.numpy())


def torch_loop():
    import torch

    import tmpi_adapters.torch as tmpi_torch

    model = torch.nn.Linear(DIM, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(initial_weights(rank).T))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    sync = tmpi_torch.distributed(model, optimizer, "bsp", mode=args.mode,
                                  bucket_mb=1e-5)
    for _ in range(args.epochs):
        n = 0
        for x, y in sync.batches(mine):
            optimizer.zero_grad()
            loss = torch.mean((model(torch.from_numpy(x))
                               - torch.from_numpy(y)) ** 2)
            loss.backward()
            optimizer.step()
            n += 1
        steps.append(n)
    sync.finalize()
    return model.weight.detach().numpy().T


def graph():
    import tmpi_core

    if args.lib == "theano":
        import theano as lib
        import theano.tensor as T
    else:
        import pytensor as lib
        import pytensor.tensor as T
    if args.lib == "theano":
        import tmpi_adapters.lasagne as adapter
    else:
        import tmpi_adapters.pytensor as adapter

    w = lib.shared(initial_weights(rank).astype(np.float64), name="w")
    x, y = T.dmatrix("x"), T.dmatrix("y")
    loss = T.mean((T.dot(x, w) - y) ** 2)
    rule = tmpi_core.make_rule("bsp", mode=args.mode)
    if args.mode == "grads":
        (g,) = adapter.distributed_grads([T.grad(loss, w)], rule,
                                         params=[w])
        updates = [(w, w - args.lr * g)]
        batches = tmpi_core.UnevenBatches(mine, rule=rule)
    else:
        updates = adapter.distributed([(w, w - args.lr * T.grad(loss, w))],
                                      rule)
        batches = updates.batches(mine)
    train = lib.function([x, y], loss, updates=updates)
    for _ in range(args.epochs):
        n = 0
        for xb, yb in batches:
            train(xb.astype(w.dtype), yb.astype(w.dtype))
            n += 1
        steps.append(n)
    if args.mode != "grads":
        updates.finalize()
    return np.asarray(w.get_value())


def fit(parsed):
    """One configuration: train through ``--entry``, write
    DIR/rank{r}.json."""
    global args, counts, mine, steps
    args = parsed
    counts = [int(c) for c in args.batches.split(",")]
    mine = batches_of(rank, counts[rank])
    steps = []
    w = {"core": core, "keras": keras_fit, "graph": graph,
         "torch": torch_loop}[args.entry]()
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"w": np.asarray(w, np.float64).ravel().tolist(),
                   "steps": steps, "own": counts[rank]}, f)


fit_each_config(p, fit, lambda: rank)
