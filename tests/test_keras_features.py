"""The Keras features users combine with TMPISync, on every backend: mixed
precision (a step the loss scaler skips is skipped on every rank), fit on a
PyDataset / generator / tf.data, batch-norm statistics averaged before
validation and checkpoints, ModelCheckpoint and BackupAndRestore next to
TMPISync. One 2-rank launch runs every case (tests/mpi/keras_features.py).
"""

import importlib.util

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="the Keras adapter needs keras")

from kfeatures import B, EPOCHS, N, POISON, RANKS, mixed_model  # noqa: E402
from kmodels import compile_model, make_data, make_model, make_optimizer  # noqa: E402
from mpirun import run_mpi_json  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_mpi_json("keras_features.py", RANKS,
                        tmp_path_factory.mktemp("features"), timeout=600)


def large_batch(model, x, y, epochs=EPOCHS):
    model.fit(x, y, batch_size=RANKS * B, epochs=epochs, shuffle=False,
              verbose=0)
    return model


def assert_weights_close(got, want, tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=tol,
                                   atol=tol)


def test_mixed_precision_skips_the_same_steps_as_one_process(ranks):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = make_data(N)
        x[POISON, 0] = np.inf
        ref = large_batch(compile_model(mixed_model(100),
                                        make_optimizer("momentum")), x, y)
        want = {"weights": ref.get_weights(),
                "scale": float(np.asarray(ref.optimizer.dynamic_scale.numpy())),
                "updates": int(np.asarray(
                    ref.optimizer.inner_optimizer.iterations.numpy()))}
    finally:
        keras.mixed_precision.set_global_policy("float32")
    steps = EPOCHS * N // (RANKS * B)
    # the poisoned step was skipped in every epoch (one process sees the
    # sample in its doubled batch)
    assert want["updates"] == steps - EPOCHS
    for r, got in enumerate(ranks):
        got = got["mixed"]
        assert got["optimizer"] == "LossScaleOptimizer"
        assert got["updates"] == want["updates"], f"rank {r}"
        assert got["scale"] == want["scale"], f"rank {r}"
        assert all(np.isfinite(np.asarray(w)).all() for w in got["weights"])
        # float16 forward passes: the order of the sums differs
        assert_weights_close(got["weights"], want["weights"], 2e-3)
    for a, b in zip(ranks[0]["mixed"]["weights"], ranks[1]["mixed"]["weights"]):
        np.testing.assert_array_equal(a, b)


FEEDS = ["pydataset", "generator", "tf_data"]


@pytest.mark.parametrize("feed", FEEDS)
def test_fit_on_datasets_and_generators_equals_large_batch(ranks, feed):
    if feed == "tf_data" and importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tf.data needs tensorflow (the .venv-tf run has it)")
    x, y = make_data(N)
    want = large_batch(compile_model(make_model(100),
                                     make_optimizer("momentum")), x, y)
    for r, got in enumerate(ranks):
        assert_weights_close(got["inputs"][feed], want.get_weights(), 1e-5)


def test_batchnorm_statistics_are_averaged_before_every_validation(ranks):
    own = np.array([got["bn"]["own"] for got in ranks])    # rank, epoch, ch
    assert own.shape[:2] == (RANKS, EPOCHS)
    # the ranks' own statistics differ: there is something to average
    assert not np.allclose(own[0], own[1])
    for r, got in enumerate(ranks):
        np.testing.assert_allclose(got["bn"]["validated"], own.mean(axis=0),
                                   rtol=1e-6, atol=1e-7, err_msg=f"rank {r}")


def test_model_checkpoint_next_to_tmpisync_saves_the_averaged_model(ranks):
    final = ranks[0]["bn"]["final"]
    for a, b in zip(ranks[1]["bn"]["final"], final):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ranks[0]["bn"]["checkpointed"], final):
        np.testing.assert_array_equal(a, b)


def test_backup_and_restore_next_to_tmpisync_resumes(ranks):
    for r, got in enumerate(ranks):
        got = got["bn"]
        assert got["resumed_epochs"] == [EPOCHS, EPOCHS + 1], f"rank {r}"
        assert_weights_close(got["resumed"], got["straight"], 1e-6)
