"""NaN/Inf on one rank under BSP's ``nonfinite`` option.

``mpiexec -n 2 python nonfinite.py --case core-skip|core-raise|params-raise|
keras-skip|keras-raise --out DIR``: rank 1 produces NaN at step 3 (batch 3);
each rank writes ``DIR/rank{r}.json`` when it gets to the end.
"""

import argparse
import json
import os

import numpy as np

from tmpi_core import BSP, get_context
from mpirun import note_errors_per_rank  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--case", required=True)
p.add_argument("--out", required=True)
args = p.parse_args()
ctx = get_context()
BAD = 3
result = {}

note_errors_per_rank(args.out, ctx.rank)

if args.case.startswith(("core", "params")):
    mode = "params" if args.case.startswith("params") else "grads"
    rule = BSP(mode=mode, nonfinite=args.case.split("-")[1])
    params = [np.zeros((5, 3), np.float32), np.zeros(4, np.float32)]
    rule.start(params)
    outcomes = []
    for step in range(6):
        grads = [np.full((5, 3), ctx.rank + step, np.float32),
                 np.full(4, -1.0, np.float32)]
        if step == BAD and ctx.rank == 1:
            grads[1][2] = np.nan if mode == "grads" else np.inf
        if mode == "grads":
            out = rule.on_gradients(grads)
            outcomes.append(None if out is None else float(out[0][0, 0]))
            rule.end_step()
        else:
            out = rule.end_step(grads)
            outcomes.append(float(out[0][0, 0]))
    result = {"outcomes": outcomes, "skipped": rule.skipped}
else:
    import keras

    import tmpi_adapters.keras as tmpi_keras
    from kmodels import compile_model, make_data, make_model, make_optimizer

    x, y = make_data(96)
    x, y = tmpi_keras.shard((x, y))
    if ctx.rank == 1:
        x[BAD * 8 + 2, 0] = np.nan           # one sample of batch 3
    model = compile_model(make_model(7), make_optimizer("momentum"))
    sync = tmpi_keras.TMPISync("bsp", nonfinite=args.case.split("-")[1])
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, callbacks=[sync],
              verbose=0)
    result = {"weights": [w.tolist() for w in model.get_weights()],
              "iterations": int(model.optimizer.iterations.numpy()),
              "skipped": sync.rule.skipped}
with open(os.path.join(args.out, f"rank{ctx.rank}.json"), "w") as f:
    json.dump(result, f)
