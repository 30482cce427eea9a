"""BSP through TMPISync on real ranks equals single-process large-batch SGD.

Two launches serve the module: one 2-rank job trains every 2-rank
configuration of :data:`TWO_RANKS` in turn, one 3-rank job
:data:`THREE_RANKS`; each test checks its configuration's results.
"""

import functools
import os

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="the Keras adapter needs keras")

from kmodels import compile_model, make_data, make_model, make_optimizer  # noqa: E402
from mpirun import run_mpi_configs  # noqa: E402

N, B, EPOCHS = 160, 8, 3          # 2 ranks x 10 steps x 3 epochs = 30 steps
LARGE_BATCH = ("--batch", B, "--n", N, "--epochs", EPOCHS)

# (mode, optimizer, strategy) checked against the large-batch reference
EQUAL_LARGE_BATCH = [
    ("grads", "momentum", "ar"),
    ("grads", "adam", "ar"),
    ("params", "sgd", "ar"),
    ("params", "momentum", "ar"),
    ("grads", "adam", "shm"),          # reduced in MPI shared memory
    ("params", "momentum", "shm"),
]

#: keras_fit.py's options per configuration of the 2-rank job
TWO_RANKS = {
    **{"-".join(c): ("--mode", c[0], "--optimizer", c[1], "--strategy", c[2],
                     *LARGE_BATCH) for c in EQUAL_LARGE_BATCH},
    "accumulate": ("--optimizer", "adam", "--accumulate", 2, *LARGE_BATCH),
    "fits": ("--optimizer", "adam", "--fits", 2, *LARGE_BATCH),
    "every": ("--mode", "params", "--every", 4, "--optimizer", "sgd",
              "--epochs", 2),
    "lr-scaling": ("--optimizer", "sgd", "--lr-scaling", "linear",
                   "--warmup-steps", 5, "--epochs", 1),
    "fp16": ("--optimizer", "momentum", "--strategy", "asa16",
             *LARGE_BATCH),
}
TORCH = keras.backend.backend() == "torch"
if TORCH:       # overlap hooks torch's backward pass
    TWO_RANKS["overlap"] = ("--optimizer", "adam", "--overlap", *LARGE_BATCH)
only_torch = pytest.mark.skipif(not TORCH, reason="torch backend only")
#: the 3-rank job's; it runs with no thread count set (the torch thread
#: test's part)
THREE_RANKS = {
    "uneven-batchnorm": ("--n", 161, "--batchnorm", "--epochs", 2),
}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every 2-rank configuration's results, from one launch."""
    return run_mpi_configs("keras_fit.py", 2, tmp_path_factory.mktemp("two"),
                           TWO_RANKS, timeout=600)


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory):
    """The 3-rank configurations' results, from one launch with neither
    ``OMP_NUM_THREADS`` nor ``TMPI_NUM_THREADS`` set."""
    return run_mpi_configs("keras_fit.py", 3,
                           tmp_path_factory.mktemp("three"), THREE_RANKS,
                           timeout=300, env={"OMP_NUM_THREADS": None,
                                             "TMPI_NUM_THREADS": None})


@functools.lru_cache(maxsize=None)
def reference(optimizer, *, ranks=2, fits=1, accumulate=None):
    """One process, batch ranks*B, same data order and initial weights.

    Cached: several tests compare with the same run (do not modify it).
    """
    x, y = make_data(N)
    xv, yv = make_data(N // 2, seed=1)
    model = compile_model(make_model(100), make_optimizer(
        optimizer, accumulate=accumulate))
    histories = []
    for _ in range(fits):
        h = model.fit(x, y, batch_size=ranks * B, epochs=EPOCHS, shuffle=False,
                      validation_data=(xv, yv), verbose=0)
        histories.append(h.history)
    return model.get_weights(), histories


def assert_weights_close(got, want, tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode,optimizer,strategy", EQUAL_LARGE_BATCH)
def test_bsp_two_ranks_equal_large_batch(two_ranks, mode, optimizer,
                                         strategy):
    check_large_batch(two_ranks[f"{mode}-{optimizer}-{strategy}"], optimizer)


def test_gradient_accumulation_exchanges_once_per_update(two_ranks):
    # gradient_accumulation_steps=2: Keras updates every 2nd step; the
    # ranks exchange only then (their accumulated totals)
    ranks = two_ranks["accumulate"]
    want_w, _ = reference("adam", ranks=2, accumulate=2)
    steps = EPOCHS * N // (2 * B)
    for r in ranks:
        assert_weights_close(r["weights"], want_w, 2e-4)
        assert r["exchanges"] == steps // 2, r["exchanges"]


@only_torch
def test_overlapped_buckets_equal_large_batch(two_ranks):
    # torch backend: gradients exchanged bucket by bucket during backward
    # (many small buckets here)
    check_large_batch(two_ranks["overlap"], "adam")


def check_large_batch(ranks, optimizer):
    """keras_fit.py's ranks (batch B each) against :func:`reference`."""
    want_w, want_h = reference(optimizer, ranks=len(ranks))
    for r in ranks:
        assert_weights_close(r["weights"], want_w, 2e-4)
    # Identical on every rank, bit for bit: they were averaged at the end.
    for other in ranks[1:]:
        for a, b in zip(ranks[0]["weights"], other["weights"]):
            np.testing.assert_array_equal(a, b)
    # Epoch logs are global: equal to the large-batch run's, on every rank.
    for r in ranks:
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(r["histories"][0][key], want_h[0][key],
                                       rtol=2e-4, atol=2e-4, err_msg=key)


def test_repeated_fit_and_evaluate_are_global(two_ranks):
    ranks = two_ranks["fits"]
    want_w, want_h = reference("adam", fits=2)
    for r in ranks:
        assert_weights_close(r["weights"], want_w, 5e-4)
        np.testing.assert_allclose(r["histories"][1]["loss"],
                                   want_h[1]["loss"], rtol=5e-4, atol=5e-4)
    # evaluate() with the callback: the mean of the ranks' local results.
    local = [r["local_evaluate"]["loss"] for r in ranks]
    assert abs(local[0] - local[1]) > 1e-6, "shards should differ locally"
    for r in ranks:
        assert r["evaluate"]["loss"] == pytest.approx(np.mean(local), rel=1e-6)


def test_three_ranks_uneven_data_and_batchnorm(three_ranks):
    # 161 samples over 3 ranks: each gets 53, none waits. Batch-norm moving
    # statistics differ per rank during training and are averaged at the end.
    ranks = three_ranks["uneven-batchnorm"]
    for r in ranks[1:]:
        for a, b in zip(ranks[0]["weights"], r["weights"]):
            np.testing.assert_array_equal(a, b)
        assert r["histories"] == ranks[0]["histories"]


def test_periodic_averaging_every_k(two_ranks):
    ranks = two_ranks["every"]
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]):
        np.testing.assert_array_equal(a, b)
    # Local SGD is not large-batch SGD: it must differ from the reference
    # (guards against a rule that silently averages every step).
    want_w, _ = reference("sgd")
    assert max(np.abs(np.asarray(g) - w).max()
               for g, w in zip(ranks[0]["weights"], want_w)) > 1e-4


def test_linear_lr_scaling_with_warmup(two_ranks):
    ranks = two_ranks["lr-scaling"]
    base = 0.1
    want = [base * (1 + (2 - 1) * min(1.0, s / 5)) for s in range(10)]
    for r in ranks:
        np.testing.assert_allclose(r["lrs"], want, rtol=1e-6)


def test_torch_threads_split_the_host(three_ranks):
    # the 3-rank job runs with no thread count set
    ranks = three_ranks["uneven-batchnorm"]
    want = max(1, len(os.sched_getaffinity(0)) // 3)
    assert [r["threads"] for r in ranks] == [want] * 3
    if TORCH:
        assert [r["torch_threads"] for r in ranks] == [want] * 3


def test_fp16_exchange_stays_close_to_large_batch(two_ranks):
    ranks = two_ranks["fp16"]
    want_w, _ = reference("momentum")
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]):
        np.testing.assert_array_equal(a, b)
    diffs = [np.abs(np.asarray(g) - w).max()
             for g, w in zip(ranks[0]["weights"], want_w)]
    # fp16 gradients: close to the fp32 large-batch run, but not equal to it
    assert max(diffs) < 2e-2, diffs
    assert max(diffs) > 1e-6, diffs
