"""Train the Blocks test network with ``TMPISync`` on every rank, once per
run described in ``--runs``.

``mpiexec -n P python blocks_fit.py --out DIR --runs JSON``: ``JSON`` is a
list of runs, each a dict with ``name`` and optionally ``rule``
(``'bsp'``), ``options`` (the rule's), ``step_rule`` (``'adam'`` or
``'momentum'``), ``epochs`` (2), ``steps`` (4 batches per epoch),
``batch`` (8 rows per rank), ``short`` (batches the last rank lacks per
epoch, 0), ``seed`` (100: rank ``r`` starts from ``seed + r``),
``hidden`` (one count, or one per rank), ``checkpoint`` (a tmpi
checkpoint directory under DIR), ``monitor`` (TrainingDataMonitoring of
the cost, and each rank's own batch costs) and ``blocks_checkpoint``
(Blocks' Checkpoint to ``DIR/<name>-blocks{rank}.tar``). Each run builds
its network anew; each rank writes ``DIR/rank{r}.json``: per run, its
parameters before and after, the monitored records and what it counted.
"""

import argparse
import json
import os

import numpy as np

from blocks_model import build, data, rank_rows, stream, values
from mpirun import note_errors_per_rank

import theano
from blocks.extensions import FinishAfter, SimpleExtension
from blocks.extensions.monitoring import TrainingDataMonitoring
from blocks.extensions.saveload import Checkpoint
from blocks.main_loop import MainLoop
from tmpi_adapters.blocks import TMPISync
from tmpi_core import get_context

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--runs", required=True, help="JSON list of runs")
args = p.parse_args()

ctx = get_context()
rank, ranks = ctx.rank, ctx.size
note_errors_per_rank(args.out, rank)


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


def train(run):
    """One main loop as ``run`` says; returns this rank's record of it."""
    steps, batch = run.get("steps", 4), run.get("batch", 8)
    hidden = run.get("hidden", 16)
    hidden = hidden[rank] if isinstance(hidden, list) else hidden
    # Ranks start from different weights: TMPISync must broadcast rank 0's.
    cost, model, algorithm, inputs = build(
        run.get("seed", 100) + rank, run.get("step_rule", "adam"),
        hidden=hidden)
    params = algorithm.parameters
    x, y = data(steps, batch, ranks)
    own = steps - (run.get("short", 0) if rank == ranks - 1 else 0)
    rows = rank_rows(own, batch, ranks, rank)
    initial = values(params)
    checkpoint = run.get("checkpoint")
    sync = TMPISync(run.get("rule", "bsp"),
                    checkpoint=(os.path.join(args.out, checkpoint)
                                if checkpoint else None),
                    **run.get("options", {}))
    extensions = [sync]
    record = Record()
    if run.get("monitor"):
        extensions.append(TrainingDataMonitoring([cost], after_epoch=True))
        record = Record(theano.function(list(inputs), cost))
    extensions += [record, FinishAfter(after_n_epochs=run.get("epochs", 2))]
    if run.get("blocks_checkpoint"):
        extensions.append(Checkpoint(
            os.path.join(args.out, f"{run['name']}-blocks{rank}.tar"),
            after_training=True))
    main_loop = MainLoop(algorithm, stream(x[rows], y[rows], batch),
                         model=model, extensions=extensions)
    main_loop.run()
    status = main_loop.log.status
    return {"initial": initial, "params": values(params),
            "steps": record.steps, "epoch_costs": record.epoch_costs,
            "local_costs": record.local_costs,
            "iterations_done": status["iterations_done"],
            "epochs_done": status["epochs_done"],
            "rule_steps": sync.rule.step,
            "total_weight": getattr(sync.rule, "total_weight", None),
            "dtype": str(np.asarray(params[0].get_value()).dtype)}


results = {run["name"]: train(run) for run in json.loads(args.runs)}
with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
    json.dump(results, f)
