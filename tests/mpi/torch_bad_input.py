"""Bad input to tmpi_adapters.torch on real ranks.

``mpiexec -n 2 python torch_bad_input.py``: rank 1 builds a wider model.
Every rank must raise the same ValueError (before any exchange, no hang):
each prints ``case torch-model rank R: ValueError: <message>`` and exits 3.
"""

import sys

import torch

import tmpi_adapters.torch as tmpi_torch
from tmpi_core import get_context

rank = get_context().rank
model = torch.nn.Linear(4, 3 if rank == 0 else 5)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
try:
    tmpi_torch.distributed(model, optimizer, "bsp")
except ValueError as e:
    print(f"case torch-model rank {rank}: ValueError: {e}", flush=True)
    sys.exit(3)
print(f"case torch-model rank {rank}: no error", flush=True)
