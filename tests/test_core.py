"""The framework-free core: serially and on real MPI ranks."""

import os
import tracemalloc

import numpy as np
import pytest

import tmpi_core
from mpirun import run_mpi_json
from tmpi_core import FlatBuffer, make_rule, shard, shard_indices


def test_flat_buffer_views_share_one_contiguous_array():
    buf = FlatBuffer([(2, 3), (4,), ()])
    assert buf.size == 11 and buf.data.flags.c_contiguous
    buf.pack([np.ones((2, 3)), np.arange(4), np.array(7.0)])
    np.testing.assert_array_equal(buf.data,
                                  [1, 1, 1, 1, 1, 1, 0, 1, 2, 3, 7])
    buf.data[:] = -1
    assert all((v == -1).all() for v in buf.views)
    targets = [np.zeros((2, 3)), np.zeros(4), np.zeros(())]
    buf.unpack(targets)
    assert targets[1].tolist() == [-1, -1, -1, -1]


def allocated_during(action, repeat=20):
    """Peak bytes allocated (numpy data included: numpy reports its buffers
    to tracemalloc) while ``action`` runs ``repeat`` times, after one warm-up
    call, over what was allocated before."""
    tracemalloc.start()
    try:
        action()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(repeat):
            action()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - before


def test_flat_buffer_per_step_path_allocates_nothing():
    # The per-step path: pack float32 tensors (scaled by 1/p or not, None for
    # a missing gradient), then unpack the reduced buffer. Every tensor is
    # 64 kB or more, so a temporary copy of any one of them breaks the limit;
    # what stays under it is Python bookkeeping (numpy 1.23's function
    # dispatch keeps a few kB of small objects).
    shapes = [(512, 512), (16384,), (3, 3, 64, 64)]
    buf = FlatBuffer(shapes)
    tensors = [np.ones(s, np.float32) for s in shapes]
    targets = [np.empty(s, np.float32) for s in shapes]
    steps = {
        "pack": lambda: buf.pack(tensors),
        "pack scaled": lambda: buf.pack(tensors, scale=0.5),
        "pack with None": lambda: buf.pack([None, tensors[1], None]),
        "unpack": lambda: buf.unpack(targets),
    }
    limit = 32 * 1024
    assert min(t.nbytes for t in tensors) >= 2 * limit
    for name, step in steps.items():
        assert allocated_during(step) < limit, name
    # the measurement sees what a copying pack would allocate
    copying = lambda: buf.pack([t * 1 for t in tensors])  # noqa: E731
    assert allocated_during(copying) >= buf.nbytes


def test_flat_buffer_pack_checks_shapes():
    buf = FlatBuffer([(2, 3), (4,)])
    buf.data[:] = 5
    buf.pack([np.ones((2, 3)), None])
    assert buf.views[1].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"array 1 has shape \(5,\)"):
        buf.pack([np.ones((2, 3)), np.ones(5)])
    with pytest.raises(ValueError, match="expected 2 arrays"):
        buf.pack([np.ones((2, 3))])


def test_shard_indices_equal_counts_and_disjoint():
    parts = [shard_indices(11, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert sorted(np.concatenate(parts).tolist()) == list(range(9))
    x, y = shard((np.arange(11), np.arange(11) * 2), 1, 3)
    assert x.tolist() == [1, 4, 7] and y.tolist() == [2, 8, 14]
    with pytest.raises(ValueError, match="cannot shard 2 samples over 3"):
        shard_indices(2, 0, 3)
    with pytest.raises(ValueError, match="different lengths"):
        shard((np.arange(3), np.arange(4)), 0, 1)


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "avg"}, "mode='avg'"),
    ({"every": 0}, "every=0 must be >= 1"),
    ({"every": 1.5}, "every=1.5 must be an integer"),
    ({"every": 3}, "every=3 needs mode='params'"),
    ({"strategy": "nccl"}, "strategy='nccl' is not a known exchanger"),
    ({"lr_scaling": "sqrt"}, "lr_scaling='sqrt'"),
    ({"warmup_steps": -1}, "warmup_steps=-1 must be >= 0"),
    ({"momentum": 0.9}, r"unknown option\(s\) \['momentum'\] for rule 'bsp'"),
])
def test_bad_bsp_options_name_the_culprit(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_rule("bsp", **kwargs)


def test_none_gradient_on_first_exchange_is_an_error():
    rule = make_rule("bsp")
    rule.start([np.zeros(2)])
    with pytest.raises(ValueError, match=r"gradients \[0\] are None"):
        rule.on_gradients([None])


def test_unknown_rule_lists_known_ones():
    with pytest.raises(ValueError, match=r"rule='sgd' is not a known rule; "
                                         r"choose one of \['bsp', 'easgd', 'gosgd'\]"):
        make_rule("sgd")


def test_lr_factor_linear_warmup_single_rank_is_one():
    rule = make_rule("bsp", lr_scaling="linear", warmup_steps=4)
    assert rule.lr_factor() == 1.0


@pytest.mark.parametrize("ranks", [1, 3])
def test_core_rules_on_real_ranks(tmp_path, ranks):
    check_core_rules(run_mpi_json("core_rules.py", ranks, tmp_path), ranks)


def check_core_rules(results, ranks, ppn=None):
    """Every rank's record from core_rules.py against closed forms in the
    rank count; ``ppn`` ranks per host (default: all on one host)."""
    ppn = ranks if ppn is None else ppn
    mean = (ranks + 1) / 2                      # mean of 1..p
    for rank, r in enumerate(results):
        assert r["size"] == ranks and r["local_size"] == ppn
        assert r["local_rank"] == rank % ppn
        # rank 0's values, exactly, in float32, float64 and int64
        assert r["bcast"][0] == [[1.5, 1.5]] * 3
        assert r["bcast"][1] == [0 + 1e-12, 1 + 1e-12, 2 + 1e-12, 3 + 1e-12]
        assert r["bcast"][2] == [2**40]
        for step, means in enumerate(r["grad_means"], start=1):
            np.testing.assert_allclose(means[0], np.full((3, 2), mean * step),
                                       rtol=1e-6)
            np.testing.assert_allclose(means[1], np.full(5, -mean * step),
                                       rtol=1e-6)
            # a gradient missing after the first step counts as zeros
            assert means[2] == ([1.0, 1.0] if step == 1 else [0.0, 0.0])
        assert r["step"] == 3
        avg = (ranks - 1) / 2                    # mean of 0..p-1
        ex = r["param_exchanges"]
        assert ex[0] is None and ex[2] is None and ex[4] is None
        np.testing.assert_allclose(ex[1], [avg] * 3)
        np.testing.assert_allclose(ex[3], [avg] * 3)
        np.testing.assert_allclose(r["final"], [avg] * 3)
        assert r["shard"] == list(range(rank, (10 // ranks) * ranks, ranks))


def test_threads_per_rank_split_the_host(tmp_path):
    results = run_mpi_json("core_rules.py", 2, tmp_path,
                           env={"OMP_NUM_THREADS": None,
                                "TMPI_NUM_THREADS": None})
    cores = len(os.sched_getaffinity(0))
    assert [r["threads"] for r in results] == [max(1, cores // 2)] * 2
    results = run_mpi_json("core_rules.py", 2, tmp_path,
                           env={"TMPI_NUM_THREADS": 3})
    assert [r["threads"] for r in results] == [3, 3]


def test_package_exports_are_documented():
    for name in tmpi_core.__all__:
        obj = getattr(tmpi_core, name)
        if callable(obj):
            assert obj.__doc__, f"tmpi_core.{name} has no docstring"


def test_importing_tmpi_starts_no_mpi():
    # a launcher wrapper or the .pth hook may import tmpi before exec'ing
    # the user's program: MPI must not be initialised by the import
    import subprocess
    import sys

    code = ("import sys, tmpi_core, tmpi_core.exchangers, tmpi_core.launch; "
            "print('mpi4py.MPI' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
