"""Drive a core rule with a Recorder attached; rank 1 can be made slow.

``mpiexec -n P python recorder_core.py --run-dir DIR --rule bsp [--sleep S]``:
every step, rank 1 sleeps ``S`` seconds of "compute" before the exchange,
and every training rank records ``loss = 1 / (step + 1) + rank`` and
``accuracy = step / 100``. The test reads ``DIR`` afterwards.
"""

import argparse
import json
import time

import numpy as np

from tmpi_core import Recorder, make_rule, get_context

p = argparse.ArgumentParser()
p.add_argument("--run-dir", required=True)
p.add_argument("--rule", default="bsp")
p.add_argument("--options", default="{}", help="JSON options of --rule")
p.add_argument("--steps", type=int, default=6)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--samples", type=int, default=4)
p.add_argument("--flush-every", type=int, default=4)
args = p.parse_args()

ctx = get_context()
rule = make_rule(args.rule, **json.loads(args.options))
rule.recorder = Recorder(args.run_dir, flush_every=args.flush_every,
                         samples_per_step=args.samples)
x = rule.start([np.full(5, float(ctx.rank), np.float32)])[0].copy()
role = rule.role
if role != "server":
    for step in range(args.steps):
        rule.recorder.begin_step()
        if ctx.rank == 1 and args.sleep:
            time.sleep(args.sleep)
        grads = [np.full(5, 1.0 + ctx.rank, np.float32)]
        if rule.exchanges_gradients:
            grads = rule.on_gradients(grads)
        x = x - 0.1 * grads[0]
        new = rule.end_step([x] if rule.wants_params() else None)
        if new is not None:
            x = np.array(new[0])
        rule.recorder.end_step(loss=1.0 / (step + 1) + ctx.rank,
                               epoch=step // 3, accuracy=step / 100)
rule.finalize([x])
rule.recorder.close()
