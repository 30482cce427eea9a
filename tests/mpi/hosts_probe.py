"""What each rank sees of the emulated hosts, and one timed Allreduce.

``mpiexec [tests/hosts.py placement] python hosts_probe.py --out DIR --mib M``:
every rank writes ``DIR/rank{r}.json`` with its host name, MPI's processor
name, the size of its ``MPI_COMM_TYPE_SHARED`` communicator (its node), the
UCX transports it was given, and whether an in-place Allreduce of ``M`` MiB
of float32 summed exactly (rank ``r`` contributes ``r + 1``), with the
Allreduce's seconds.
"""

import argparse
import json
import os
import socket
import time

import numpy as np
from mpi4py import MPI

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--mib", type=int, default=16)
args = p.parse_args()

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
node = comm.Split_type(MPI.COMM_TYPE_SHARED)
data = np.full(args.mib * 2**20 // 4, rank + 1, np.float32)
comm.Barrier()
start = time.perf_counter()
comm.Allreduce(MPI.IN_PLACE, data)
seconds = time.perf_counter() - start
want = size * (size + 1) / 2                  # exact in float32 for p <= 16
with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
    json.dump({"hostname": socket.gethostname(),
               "processor": MPI.Get_processor_name(),
               "node_size": node.Get_size(), "node_rank": node.Get_rank(),
               "ucx_tls": os.environ.get("UCX_TLS"),
               "exact": bool((data == want).all()), "seconds": seconds}, f)
node.Free()
