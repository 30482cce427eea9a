"""TrainingState without a framework: save, restore and the stop agreement.

Run by tests/test_state.py as ``mpiexec -n 2 python state_core.py --out DIR
--ckpt CKPT``. Rank 1 sends itself SIGINT at step 3; both ranks note the
step where the agreement says stop. Then a checkpoint is written, a second
TrainingState restores it into zeroed arrays, and each rank writes what it
got back.
"""

import argparse
import json
import os
import signal

import numpy as np

import tmpi_core
from tmpi_core.state import ModelIO, ordered_arrays

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--ckpt", required=True)
p.add_argument("--rule", default="bsp")
args = p.parse_args()


class ArraysIO(ModelIO):
    """A model of plain numpy arrays."""

    def __init__(self, arrays):
        self.arrays = arrays

    def read_synchronised(self):
        return self.arrays

    def write_synchronised(self, arrays):
        for a, v in zip(self.arrays, arrays):
            np.copyto(a, v)

    def read_all(self):
        return {f"w/{i}": a for i, a in enumerate(self.arrays)}

    def load_all(self, arrays, path):
        self.write_synchronised(ordered_arrays(arrays, "w", self.arrays, path,
                                               what="model"))


options = {"mode": "params"} if args.rule == "bsp" else {"p": 0.5, "seed": 3}
rule = tmpi_core.make_rule(args.rule, **options)
rank = rule.context.rank
w = [np.full((3, 2), rank, np.float32), np.arange(4, dtype=np.float32)]
w = [np.array(a) for a in rule.start(w)]
state = tmpi_core.TrainingState(rule, ArraysIO(w), directory=args.ckpt)
state.arm()
stopped_at = None
for step in range(50):
    w[0] += 0.5 * (rank + 1)                 # a local "update"
    new = rule.end_step(lambda: w)
    if new is not None:
        for a, v in zip(w, new):
            np.copyto(a, v)
    if step == 3 and rank == 1:
        os.kill(os.getpid(), signal.SIGINT)  # noted, not raised
    if state.stop_requested():
        stopped_at = step
        break
path = state.save(epoch=2, batch=stopped_at + 1, interrupted=True)
state.close()
saved = [a.copy() for a in w]

back = [np.zeros_like(a) for a in w]
again = tmpi_core.TrainingState(rule, ArraysIO(back), directory=args.ckpt)
epoch = again.restore()
with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
    json.dump({"stopped_at": stopped_at, "epoch": epoch,
               "interrupted": again.restored.meta["interrupted"],
               "equal": all(np.array_equal(a, b)
                            for a, b in zip(saved, back)),
               "step": rule.step,
               "handler_back": signal.getsignal(signal.SIGINT)
               is signal.default_int_handler}, f)
