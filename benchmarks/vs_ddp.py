"""tmpi_torch against torch DDP, side by side in one run.

    mpiexec -n 2 python benchmarks/vs_ddp.py [--steps 20 --rounds 5]
    mpiexec -n 2 -genv MPIR_CVAR_ASYNC_PROGRESS 1 python benchmarks/vs_ddp.py

The same torch model (a small ResNet on 32x32 images), data, per-rank
batch, threads and steps under: torch DDP (gloo, bootstrapped from the MPI
communicator), ``tmpi_torch`` BSP without overlap (the whole fused buffer
at ``step``), with overlap (buckets during backward; MPI progresses inside
its own calls, or in MPICH's progress thread when
``MPIR_CVAR_ASYNC_PROGRESS=1``), with overlap and the gradient hooks
testing the started requests (``progress='test'``), and the step alone
with no exchange (compute). The configurations alternate in rounds, so a noisy neighbour
hits them all alike; rank 0 prints the median step time of each and the
ratios. ``--bucket-mb`` takes several sizes to choose the default.
The exchange alone is timed too: one fused allreduce of the model's
gradients, so that (overlap - compute) / exchange is the share of the
exchange left visible.
"""

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn as nn

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--steps", type=int, default=15, help="steps per round")
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--batch", type=int, default=32, help="per-rank batch")
p.add_argument("--width", type=int, default=32, help="channels of stage 1")
p.add_argument("--bucket-mb", default="4", help="comma-separated sizes")
p.add_argument("--skip-ddp", action="store_true")
args = p.parse_args()

from mpi4py import MPI  # noqa: E402

import tmpi_adapters.torch as tmpi_torch  # noqa: E402
from tmpi_core import get_context, make_rule  # noqa: E402

ctx = get_context()
torch.set_num_threads(ctx.apply_thread_limit())


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(h)) + self.skip(x))


def resnet(width):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
        nn.ReLU(), Block(width, width, 1), Block(width, 2 * width, 2),
        Block(2 * width, 4 * width, 2), Block(4 * width, 4 * width, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10))


def fresh():
    torch.manual_seed(0)
    model = resnet(args.width)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


rng = np.random.default_rng(ctx.rank)
x = torch.from_numpy(rng.normal(size=(args.batch, 3, 32, 32))
                     .astype(np.float32))
y = torch.from_numpy(rng.integers(0, 10, args.batch))
loss_fn = nn.CrossEntropyLoss()


def train_step(model, optimizer):
    optimizer.zero_grad()
    loss_fn(model(x), y).backward()
    optimizer.step()


configs = {}
model, opt = fresh()
configs["compute"] = (model, opt)
if not args.skip_ddp:
    import torch.distributed as dist

    from tmpi_adapters.torch_device import process_group

    process_group(ctx, "gloo")        # bootstrapped over MPI, as tmpi does
    model, opt = fresh()
    configs["ddp"] = (nn.parallel.DistributedDataParallel(model), opt)
syncs = {}
model, opt = fresh()
syncs["tmpi"] = tmpi_torch.distributed(model, opt, "bsp", overlap=False,
                                       strategy="ar")
configs["tmpi"] = (model, opt)
for mb in [float(v) for v in args.bucket_mb.split(",")]:
    model, opt = fresh()
    name = f"overlap {mb:g}MB"
    syncs[name] = tmpi_torch.distributed(model, opt, "bsp", overlap=True,
                                         bucket_mb=mb)
    configs[name] = (model, opt)
    model, opt = fresh()
    name = f"overlap {mb:g}MB, hooks test"
    syncs[name] = tmpi_torch.distributed(model, opt, "bsp", overlap=True,
                                         bucket_mb=mb,
                                         progress="test")
    configs[name] = (model, opt)

# the exchange alone: one fused allreduce of the gradients' bytes
grads = [np.zeros(tuple(q.shape), np.float32)
         for q in configs["compute"][0].parameters()]
alone = make_rule("bsp", strategy="ar")
nbytes = sum(g.nbytes for g in grads)

times = {name: [] for name in [*configs, "exchange alone"]}
for model, opt in configs.values():           # warm up every path
    train_step(model, opt)
alone.on_gradients(grads)
for _ in range(args.rounds):
    for name, (model, opt) in configs.items():
        ctx.comm.Barrier()
        for _ in range(args.steps):
            t0 = time.perf_counter()
            train_step(model, opt)
            times[name].append(time.perf_counter() - t0)
    ctx.comm.Barrier()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        alone.on_gradients(grads)
        times["exchange alone"].append(time.perf_counter() - t0)

# every rank's steps count: the slowest rank sets the pace
medians = {name: statistics.median(t) for name, t in times.items()}
medians = {name: max(ctx.comm.allgather(v)) for name, v in medians.items()}
if ctx.rank == 0:
    progress = os.environ.get("MPIR_CVAR_ASYNC_PROGRESS", "0")
    print(f"ranks {ctx.size}, per-rank batch {args.batch}, threads "
          f"{torch.get_num_threads()}, gradients {nbytes / 2**20:.2f} MiB, "
          f"{args.rounds} rounds x {args.steps} steps, "
          f"MPIR_CVAR_ASYNC_PROGRESS={progress}")
    compute, exchange = medians["compute"], medians["exchange alone"]
    base = medians.get("ddp")
    print(f"{'configuration':28s} {'median ms':>10s} {'/ DDP':>7s} "
          f"{'visible exchange':>17s}")
    for name, value in medians.items():
        vs = f"{value / base:7.3f}" if base else "      -"
        visible = ((value - compute) / exchange
                   if name not in ("compute", "exchange alone") else None)
        shown = f"{visible:17.2f}" if visible is not None else " " * 17
        print(f"{name:28s} {value * 1e3:10.2f} {vs} {shown}")
    print("visible exchange = (step - compute) / exchange alone; "
          "overlap hides >= 50 % of the exchange when it is <= 0.5")
for sync in syncs.values():
    sync.close()
alone.close()
if not args.skip_ddp:
    dist.destroy_process_group()
