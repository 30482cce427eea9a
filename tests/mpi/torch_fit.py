"""Train a small torch model with tmpi_adapters.torch on real ranks.

Run by tests/test_torch.py as ``mpiexec -n P python torch_fit.py --out DIR
[options]``. The model has batch-norm buffers, a layer used twice and a
layer the loss never reaches. Rank r trains on its chunk of each global
batch (the global batch's rows r*b .. (r+1)*b), with --accumulate
micro-batches per step (all but the last under ``no_sync``). Every rank
writes ``rank{r}.json`` with its parameters and buffers. With
``--configs`` one job trains several configurations in turn
(tests/mpirun.py's ``run_mpi_configs``).
"""

import argparse
import json
import os

import numpy as np
import torch

from mpirun import fit_each_config
from torch_models import OPTIMIZERS, batches, make_model

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--rule", default="bsp")
p.add_argument("--options", default="{}")
p.add_argument("--optimizer", default="momentum", choices=sorted(OPTIMIZERS))
p.add_argument("--overlap", type=int, default=1)
p.add_argument("--bucket-mb", type=float, default=0.001)
p.add_argument("--steps", type=int, default=12)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--accumulate", type=int, default=1)
p.add_argument("--backend", default=None, help="gloo | nccl (default: MPI "
               "on the CPU, NCCL on CUDA)")
p.add_argument("--progress", default="none", help="none | test")
p.add_argument("--record", default=None, help="a run directory")
p.add_argument("--device", default="cpu", help="cpu | local (the rank's GPU)")

import tmpi_adapters.torch as tmpi_torch  # noqa: E402
from tmpi_core import get_context  # noqa: E402


def fit(args):
    """One configuration: train, write DIR/rank{r}.json."""
    ctx = get_context()
    torch.manual_seed(100 + ctx.rank)        # differs: rank 0's is broadcast
    model = make_model()
    device = (tmpi_torch.local_device() if args.device == "local"
              else torch.device("cpu"))
    model.to(device)
    optimizer = OPTIMIZERS[args.optimizer](model.parameters())
    sync = tmpi_torch.distributed(model, optimizer, args.rule,
                                  overlap=bool(args.overlap),
                                  bucket_mb=args.bucket_mb,
                                  backend=args.backend,
                                  progress=args.progress, record=args.record,
                                  **json.loads(args.options))
    loss_fn = torch.nn.CrossEntropyLoss()
    for step, micro in enumerate(batches(args.steps, args.batch, ctx.size,
                                         args.accumulate)):
        optimizer.zero_grad()
        for m, (x, y) in enumerate(micro[ctx.rank]):
            last = m == len(micro[ctx.rank]) - 1
            x, y = x.to(device), y.to(device)
            with (sync.no_sync() if not last
                  else torch.enable_grad()):
                loss = loss_fn(model(x), y) / args.accumulate
                loss.backward()
        optimizer.step()
        if args.record:
            sync.record(loss=float(loss), epoch=0)
    sync.finalize()
    with open(os.path.join(args.out, f"rank{ctx.rank}.json"), "w") as f:
        json.dump({"params": [p.detach().cpu().numpy().tolist()
                              for p in model.parameters()],
                   "buffers": [b.detach().cpu().numpy().tolist()
                               for b in model.buffers()],
                   "device": str(device),
                   # GoSGD: sum of the ranks' weights when finalize met
                   "total_weight": getattr(sync.rule, "total_weight", None),
                   "step": sync.rule.step}, f)


fit_each_config(p, fit, lambda: get_context().rank)
