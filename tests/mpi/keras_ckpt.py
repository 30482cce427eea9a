"""Train the test MLP with a TMPIBackupAndRestore, optionally failing.

Run by tests/test_checkpoint_keras.py as ``mpiexec -n P python keras_ckpt.py
--out DIR --ckpt CKPT [options]``. It resumes from CKPT when that holds a
checkpoint, with no ``initial_epoch`` passed to ``fit`` (``--shorthand``:
through ``TMPISync(checkpoint=CKPT)`` instead). Faults, at
``EPOCH:BATCH`` on ``--fault-rank``: ``--kill`` (SIGKILL itself), ``--raise``
(an exception), ``--mark`` (write DIR/marker so the test can signal the
launcher). Each rank writes ``DIR/rank{r}.json`` with its final weights
and the warnings it saw. With ``--configs`` one job runs several
configurations in turn (tests/mpirun.py's ``run_mpi_configs``).
"""

import argparse
import json
import os
import signal
import time
import warnings

import keras
import numpy as np

import tmpi_adapters.keras as tmpi_keras
from kmodels import compile_model, make_data, make_model, make_optimizer
from mpirun import fit_each_config, note_errors_per_rank  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--ckpt", default=None)
p.add_argument("--rule", default="bsp")
p.add_argument("--options", default="{}", help="JSON options of --rule")
p.add_argument("--optimizer", default="momentum")
p.add_argument("--epochs", type=int, default=4)
p.add_argument("--n", type=int, default=96)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--every", type=int, default=1, help="checkpoint_every")
p.add_argument("--keep", type=int, default=2)
p.add_argument("--kill", default=None, metavar="EPOCH:BATCH")
p.add_argument("--raise", dest="raise_at", default=None, metavar="EPOCH:BATCH")
p.add_argument("--mark", default=None, metavar="EPOCH:BATCH")
p.add_argument("--fault-rank", type=int, default=1)
p.add_argument("--slow", type=float, default=0.0, help="sleep per batch")
p.add_argument("--record", default=None, help="TMPISync(record=DIR)")
p.add_argument("--shorthand", action="store_true",
               help="TMPISync(checkpoint=DIR) instead of TMPIBackupAndRestore")


def _at(spec):
    return None if spec is None else tuple(int(v) for v in spec.split(":"))


class Faults(keras.callbacks.Callback):
    """The faults ``args`` ask for, on ``args.fault_rank``."""

    epoch = 0

    def __init__(self, args):
        super().__init__()
        self.args = args

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        args, rank = self.args, tmpi_keras.rank()
        here = (self.epoch, batch)
        if args.slow:
            time.sleep(args.slow)
        if rank != args.fault_rank:
            return
        if here == _at(args.kill):
            with open(os.path.join(args.out, "killed_at"), "w") as f:
                f.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        if here == _at(args.raise_at):
            raise RuntimeError(f"injected failure on rank {rank} at {here}")
        if here == _at(args.mark):
            with open(os.path.join(args.out, "marker"), "w") as f:
                f.write("ready")


def fit(args):
    """One configuration: train (resuming from --ckpt), write
    DIR/rank{r}.json."""
    rank = tmpi_keras.rank()
    note_errors_per_rank(args.out, rank)
    seen = []
    with warnings.catch_warnings():
        # tmpi's warnings each time (a later configuration's too), shown
        # as usual and kept for the results
        warnings.simplefilter("always", UserWarning)
        show = warnings.showwarning

        def keep(message, *rest, **kwargs):
            seen.append(str(message))
            show(message, *rest, **kwargs)

        warnings.showwarning = keep
        results = _train(args)
    results["warnings"] = seen
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


def _train(args):
    """Train; the results as a dict."""
    rank = tmpi_keras.rank()
    x, y = make_data(args.n)
    x, y = tmpi_keras.shard((x, y))
    model = compile_model(make_model(100 + rank),
                          make_optimizer(args.optimizer))
    callbacks = []
    if args.shorthand:
        sync = tmpi_keras.TMPISync(args.rule, checkpoint=args.ckpt,
                                   checkpoint_every=args.every,
                                   checkpoint_keep=args.keep,
                                   record=args.record,
                                   **json.loads(args.options))
    else:
        sync = tmpi_keras.TMPISync(args.rule, record=args.record,
                                   **json.loads(args.options))
        if args.ckpt:
            callbacks.append(tmpi_keras.TMPIBackupAndRestore(
                args.ckpt, sync=sync, every=args.every, keep=args.keep))
    # No initial_epoch: the checkpoint callback makes fit start at the
    # restored epoch by itself.
    start = sync.resume_epoch() if args.ckpt else 0
    model.fit(x, y, batch_size=args.batch, epochs=args.epochs, shuffle=False,
              callbacks=[sync, *callbacks, Faults(args)], verbose=0)
    return {
        "start": start,
        "weights": [np.asarray(w).tolist() for w in model.get_weights()],
        "optimizer": [np.asarray(v).tolist()
                      for v in model.optimizer.variables],
        "step": sync.rule.step,
    }


fit_each_config(p, fit, tmpi_keras.rank)
