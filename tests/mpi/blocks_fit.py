"""Train the Blocks test network with ``TMPISync`` on every rank.

``mpiexec -n P python blocks_fit.py --out DIR [--rule bsp --options JSON
--step-rule adam --epochs 2 --steps 4 --batch 8 --short 0 --seed 100
--hidden 16 --checkpoint CK --monitor --blocks-checkpoint]``, or several
such runs in turn with ``--configs`` (see :func:`mpirun.fit_each_config`);
each builds its network anew. Each rank writes ``DIR/rank{r}.json`` with
its parameters before and after, the monitored records and what it
counted; ``--blocks-checkpoint`` adds Blocks' Checkpoint to
``DIR/blocks{rank}.tar``.
"""

import argparse
import json
import os

import numpy as np

from blocks_model import build, data, rank_rows, stream, values
from mpirun import fit_each_config, note_errors_per_rank

import theano
from blocks.extensions import FinishAfter, SimpleExtension
from blocks.extensions.monitoring import TrainingDataMonitoring
from blocks.extensions.saveload import Checkpoint
from blocks.main_loop import MainLoop
from tmpi_adapters.blocks import TMPISync
from tmpi_core import get_context

ctx = get_context()
rank, ranks = ctx.rank, ctx.size

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--rule", default="bsp")
p.add_argument("--options", default="{}", help="JSON options of --rule")
p.add_argument("--step-rule", default="adam")
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--steps", type=int, default=4, help="batches per epoch")
p.add_argument("--batch", type=int, default=8, help="rows per rank")
p.add_argument("--short", type=int, default=0,
               help="batches the last rank lacks per epoch")
p.add_argument("--seed", type=int, default=100,
               help="rank r starts from the weights of seed + r")
p.add_argument("--hidden", default="16",
               help="hidden units, or one count per rank: 16,17")
p.add_argument("--checkpoint", default=None, help="tmpi checkpoint dir")
p.add_argument("--monitor", action="store_true",
               help="TrainingDataMonitoring, and each rank's own costs")
p.add_argument("--blocks-checkpoint", action="store_true",
               help="Blocks' Checkpoint to DIR/blocks{rank}.tar")


class Record(SimpleExtension):
    """Counts steps and keeps each epoch's monitored cost and, with a
    cost function, this rank's own cost of every batch (before its
    update, as TrainingDataMonitoring sees it)."""

    def __init__(self, cost_function=None):
        super().__init__(before_batch=True, after_batch=True,
                         after_epoch=True)
        self.steps = 0
        self.epoch_costs = []
        self.local_costs = []
        self.cost_function = cost_function

    def do(self, which, *rest):
        if which == "before_batch" and self.cost_function is not None:
            batch = rest[0]
            self.local_costs.append(float(self.cost_function(
                batch["features"], batch["targets"])))
        elif which == "after_batch":
            self.steps += 1
        elif which == "after_epoch" and self.cost_function is not None:
            self.epoch_costs.append(
                float(self.main_loop.log.current_row["cost"]))


def fit(args):
    """One main loop as ``args`` say; writes this rank's record of it."""
    note_errors_per_rank(args.out, rank)
    hidden = [int(h) for h in args.hidden.split(",")]
    # Ranks start from different weights: TMPISync must broadcast rank 0's.
    cost, model, algorithm, inputs = build(
        args.seed + rank, args.step_rule, hidden=hidden[rank % len(hidden)])
    params = algorithm.parameters
    x, y = data(args.steps, args.batch, ranks)
    own = args.steps - (args.short if rank == ranks - 1 else 0)
    rows = rank_rows(own, args.batch, ranks, rank)
    initial = values(params)
    sync = TMPISync(args.rule, checkpoint=args.checkpoint,
                    **json.loads(args.options))
    extensions = [sync]
    record = Record()
    if args.monitor:
        extensions.append(TrainingDataMonitoring([cost], after_epoch=True))
        record = Record(theano.function(list(inputs), cost))
    extensions += [record, FinishAfter(after_n_epochs=args.epochs)]
    if args.blocks_checkpoint:
        extensions.append(Checkpoint(
            os.path.join(args.out, f"blocks{rank}.tar"), after_training=True))
    main_loop = MainLoop(algorithm, stream(x[rows], y[rows], args.batch),
                         model=model, extensions=extensions)
    main_loop.run()
    status = main_loop.log.status
    result = {"initial": initial, "params": values(params),
              "steps": record.steps, "epoch_costs": record.epoch_costs,
              "local_costs": record.local_costs,
              "iterations_done": status["iterations_done"],
              "epochs_done": status["epochs_done"],
              "rule_steps": sync.rule.step,
              "total_weight": getattr(sync.rule, "total_weight", None),
              "dtype": str(np.asarray(params[0].get_value()).dtype)}
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


fit_each_config(p, fit, lambda: rank)
