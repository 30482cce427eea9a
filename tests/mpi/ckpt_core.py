"""Core checkpoints on real ranks: ``mpiexec -n P python ckpt_core.py
--case CASE --dir D --out OUT``; each rank writes ``OUT/rank{r}.json``.

Cases: ``roundtrip`` (shared + per-rank arrays, keep=2 pruning),
``unwritable`` (the directory is a path under a regular file), ``full``
(rank 0's file-size limit makes the second write fail mid-file),
``fallback`` (the newest checkpoint is damaged; load takes the one before).
"""

import argparse
import json
import os
import resource
import signal

import numpy as np

from tmpi_core import get_context
from tmpi_core.checkpoint import CheckpointError, Checkpointer

p = argparse.ArgumentParser()
p.add_argument("--case", required=True)
p.add_argument("--dir", required=True)
p.add_argument("--out", required=True)
args = p.parse_args()
ctx = get_context()
r = ctx.rank
result = {}


def state(k):
    return ({"w": np.arange(6.0).reshape(2, 3) * k},
            {"x": np.full(3, 10.0 * r + k, np.float32)})


if args.case == "roundtrip":
    store = Checkpointer(args.dir, keep=2)
    result["empty"] = store.load() is None
    paths = []
    for k in range(1, 4):
        shared, local = state(k)
        paths.append(store.save(shared, local=local, meta={"epoch": k}))
    ckpt = store.load()
    result.update(paths=paths, epoch=ckpt.meta["epoch"],
                  w=ckpt.shared["w"].tolist(), x=ckpt.local["x"].tolist(),
                  files=sorted(os.listdir(args.dir)), same=ckpt.same_ranks)
elif args.case in ("unwritable", "full"):
    store = Checkpointer(args.dir)
    shared, local = state(1)
    result["first"] = store.save(shared, local=local, meta={"epoch": 1})
    if args.case == "unwritable":
        store = Checkpointer(os.path.join(args.dir, "ckpt-00000001.npz",
                                          "sub"))
    elif r == 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        # 2000 bytes: the big array cannot fit, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, hard))
    shared = {"w": np.ones((1000, 100))}
    try:
        store.save(shared, local=local, meta={"epoch": 2})
        result["error"] = None
    except CheckpointError as e:
        result["error"] = str(e)
    if r == 0 and args.case == "full":
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    store = Checkpointer(args.dir)
    ckpt = store.load()
    result.update(epoch=ckpt.meta["epoch"], files=sorted(os.listdir(args.dir)))
elif args.case == "fallback":
    store = Checkpointer(args.dir, keep=3)
    for k in (1, 2):
        shared, local = state(k)
        store.save(shared, local=local, meta={"epoch": k})
    ctx.barrier()
    if r == 0:
        with open(store.latest(), "r+b") as f:
            f.truncate(100)                       # damaged by something else
    ctx.barrier()
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ckpt = store.load()
    result.update(epoch=ckpt.meta["epoch"],
                  warned=[str(w.message) for w in caught])
with open(os.path.join(args.out, f"rank{r}.json"), "w") as f:
    json.dump(result, f)
