"""Bad input and failing ranks end the job with a clear error, never a hang."""

import time

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="the Keras adapter needs keras")

import tmpi_adapters.keras as tmpi_keras  # noqa: E402
from kmodels import compile_model, make_data, make_model, make_optimizer  # noqa: E402
from mpirun import run_mpi, run_mpi_json  # noqa: E402

TIMEOUT = 60


def _fails(case, ranks=2):
    start = time.monotonic()
    proc = run_mpi("keras_faults.py", ranks, "--case", case,
                   timeout=TIMEOUT, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return proc, elapsed


def test_exception_on_one_rank_ends_the_job():
    proc, elapsed = _fails("raise")
    assert "injected failure on rank 1" in proc.stderr
    assert "Traceback" in proc.stderr
    assert elapsed < TIMEOUT


def test_mismatched_models_raise_on_every_rank():
    proc, _ = _fails("mismatch")
    for rank in (0, 1):
        assert (f"rank {rank}: parameters differ across ranks: entry 0 is "
                in proc.stdout)
    assert proc.stdout.count("shape=(6, 17) dtype=float32 on rank 1 but") == 2
    assert proc.stdout.count("every rank must build the same model") == 2


def test_unequal_steps_raise_on_every_rank():
    proc, _ = _fails("uneven")
    for rank in (0, 1):
        assert (f"rank {rank}: ranks would run different numbers of training "
                "steps ({0: 8, 1: 12})") in proc.stdout
    assert proc.stdout.count("tmpi_adapters.keras.shard((x, y))") == 2


def test_bad_option_raises_before_any_collective():
    proc, _ = _fails("badoption")
    for rank in (0, 1):
        assert f"rank {rank}: every=0 must be >= 1" in proc.stdout


@pytest.mark.parametrize("rule,options,match", [
    ("bsp", {"every": -2}, "every=-2 must be >= 1"),
    ("easy", {}, "rule='easy' is not a known rule"),
    ("bsp", {"tau": 4}, r"unknown option\(s\) \['tau'\]"),
    ("bsp", {"average_metrics": "yes"}, "average_metrics='yes'"),
])
def test_callback_validates_its_arguments(rule, options, match):
    with pytest.raises(ValueError, match=match):
        tmpi_keras.TMPISync(rule, **options)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="JAX and "
                    "TensorFlow exchange gradients from inside the compiled "
                    "step (test_keras_bsp); torch's dynamo step is refused")
def test_gradient_mode_refuses_a_compiled_train_step():
    x, y = make_data(32)
    model = compile_model(make_model(0), make_optimizer("sgd"),
                          jit_compile=True)
    with pytest.raises(ValueError, match="does not let out; compile the "
                       "model with jit_compile=False"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[tmpi_keras.TMPISync("bsp")])
    # Parameter averaging does not touch the train step: allowed.
    model = compile_model(make_model(0), make_optimizer("sgd"),
                          run_eagerly=True)
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[tmpi_keras.TMPISync("bsp", mode="params")])


def test_sharded_pydataset_gives_equal_batches():
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return np.full((2, 6), i, np.float32), np.zeros(2, np.int64)

    ds = tmpi_keras.ShardedPyDataset(Batches())
    assert len(ds) == 7 and ds[3][0][0, 0] == 3      # one rank: everything
    with pytest.raises(IndexError):
        ds[7]
    model = compile_model(make_model(0), make_optimizer("sgd"))
    model.fit(ds, epochs=1, verbose=0, callbacks=[tmpi_keras.TMPISync()])


def test_sharded_pydataset_uneven_batches_on_real_ranks(tmp_path):
    ranks = run_mpi_json("keras_pydataset.py", 2, tmp_path, "--batches", 7,
                         timeout=TIMEOUT)
    assert [r["len"] for r in ranks] == [3, 3]
    assert sorted(set(ranks[0]["seen"])) == [0, 2, 4]
    assert sorted(set(ranks[1]["seen"])) == [1, 3, 5]
    assert ranks[0]["loss"] == ranks[1]["loss"]
