"""The GPU path of tmpi_adapters.torch, where CUDA is present: buckets on
the device, summed by NCCL through a torch.distributed group bootstrapped
over MPI. Skipped without CUDA (the same code runs with gloo on the CPU
in tests/test_torch.py)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is installed in .venv")

from mpirun import run_mpi_json  # noqa: E402
from torch_models import reference  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: the GPU "
    "path runs where one is (the NCCL-free parts run in test_torch.py)")

STEPS, B = 12, 8


@pytest.mark.parametrize("overlap", [1, 0])
def test_nccl_bsp_equals_large_batch(tmp_path, overlap):
    # one rank per GPU: NCCL refuses two ranks on one device
    ranks = min(2, torch.cuda.device_count())
    results = run_mpi_json("torch_fit.py", ranks, tmp_path, "--steps", STEPS,
                           "--batch", B, "--optimizer", "adam", "--device",
                           "local", "--overlap", overlap, timeout=300)
    assert all(r["device"].startswith("cuda") for r in results)
    want = reference("adam", STEPS, B, ranks, 1)
    for got, ref in zip(results[0]["params"], want):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
