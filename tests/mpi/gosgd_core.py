"""Drive GoSGD on real ranks, many runs, with random delays.

For each run, every rank starts gossip from its own vector (rank-dependent)
and, with ``--train``, also takes local steps towards its own target.
Each rank writes ``--out DIR/rank{r}.json``: per run, the messages it sent
and received, the total weight and the consensus after ``finalize``.
"""

import argparse
import json
import os
import time

import numpy as np

from tmpi_core import get_context, make_rule

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--runs", type=int, default=1)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--p", type=float, default=0.5)
p.add_argument("--delays", action="store_true")
p.add_argument("--train", action="store_true")
p.add_argument("--no-log", action="store_true",
               help="the default GoSGD: counters only, no message lists")
args = p.parse_args()

ctx = get_context()
rank = ctx.rank
runs = []
for run in range(args.runs):
    rule = make_rule("gosgd", p=args.p, seed=1000 * run,
                     log_messages=not args.no_log)
    rule.start([np.zeros(7, np.float32)])
    x = (np.arange(7.0) + 10 * rank + run).astype(np.float32)
    start = x.tolist()
    rs = np.random.RandomState(run * 7919 + rank)
    for step in range(args.steps):
        if args.delays:
            time.sleep(rs.uniform(0, 0.002))
        if args.train:
            x = x - 0.1 * (x - rank)
        new = rule.end_step([x] if rule.wants_params() else None)
        if new is not None:
            x = np.array(new[0])
    consensus = rule.finalize([x])[0]
    runs.append({"sent": rule.sent, "received": rule.received,
                 "start": start, "total_weight": rule.total_weight,
                 "consensus": np.asarray(consensus).tolist(),
                 "weight_after": rule.weight,
                 "messages_sent": rule.messages_sent,
                 "messages_received": rule.messages_received})
with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
    json.dump(runs, f)
