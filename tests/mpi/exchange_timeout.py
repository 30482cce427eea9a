"""The exchange timeout (``TMPI_EXCHANGE_TIMEOUT``) on real ranks.

``--case extra-call``: rank 0 makes one BSP gradient exchange more than the
others, which have left; without a timeout it would wait for good.
``--case slow``: rank 1 sleeps ``--sleep`` seconds before each of 4
exchanges, less than the timeout each time though more in total; every
rank finishes and writes ``--out DIR/rank{r}.json`` with the averages.
``--case easgd-extra``: synchronous EASGD, rank 0 one elastic exchange more.
``--case agreement``: rank 1 leaves the stop agreement after 2 rounds and
waits; rank 0 goes on and waits in the agreement.
"""

import argparse
import json
import os
import time

import numpy as np

import tmpi_core

p = argparse.ArgumentParser()
p.add_argument("--case", required=True,
               choices=["extra-call", "slow", "easgd-extra", "agreement"])
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--out", default=None)
args = p.parse_args()

ctx = tmpi_core.get_context()
rank = ctx.rank
params = [np.zeros(1000, np.float32), np.zeros((3, 4), np.float32)]

if args.case == "easgd-extra":
    rule = tmpi_core.make_rule("easgd", tau=1, alpha=0.1, synchronous=True)
    rule.start(params)
    for step in range(4 if rank == 0 else 3):
        params = [x + 1 for x in params]
        out = rule.end_step(params)
        params = [o.copy() for o in out]
    raise SystemExit(0)                 # rank 0 never gets here

if args.case == "agreement":
    agreement = tmpi_core.StopAgreement()
    for _ in range(4 if rank == 0 else 2):
        agreement.round()
    time.sleep(60)                      # rank 1 is elsewhere for good
    raise SystemExit(0)

rule = tmpi_core.make_rule("bsp", mode="grads")
rule.start(params)
calls = 4 if (args.case == "slow" or rank == 0) else 3
means = []
for step in range(calls):
    if args.case == "slow" and rank == 1:
        time.sleep(args.sleep)
    grads = [np.full(1000, rank + step, np.float32),
             np.full((3, 4), -rank, np.float32)]
    out = rule.on_gradients(grads)
    means.append(float(out[0][0]))
    rule.end_step()
if args.out:
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"means": means,
                   "timeout": tmpi_core.exchange_timeout()}, f)
