"""Fit on a ShardedPyDataset whose batch count does not divide by the ranks.

Each rank writes ``--out DIR/rank{r}.json`` with the batch indices it served.
"""

import argparse
import json
import os

import keras
import numpy as np

import tmpi_adapters.keras as tmpi_keras
from kmodels import compile_model, make_model, make_optimizer

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--batches", type=int, default=7)
args = p.parse_args()

seen = []


class Batches(keras.utils.PyDataset):
    def __len__(self):
        return args.batches

    def __getitem__(self, i):
        seen.append(int(i))
        rs = np.random.RandomState(i)
        return (rs.normal(size=(4, 6)).astype(np.float32),
                rs.randint(0, 3, size=4).astype(np.int64))


model = compile_model(make_model(0), make_optimizer("sgd"))
ds = tmpi_keras.ShardedPyDataset(Batches())
h = model.fit(ds, epochs=2, verbose=0, callbacks=[tmpi_keras.TMPISync()])
with open(os.path.join(args.out, f"rank{tmpi_keras.rank()}.json"), "w") as f:
    json.dump({"seen": seen, "len": len(ds), "loss": h.history["loss"]}, f)
