"""Blocks: ``TMPISync`` in a ``MainLoop`` on real ranks, against one process
on the large batch.

One launch trains several main loops in turn (tests/mpi/blocks_fit.py):
BSP on gradients with Adam, monitored and checkpointed (Blocks' and
tmpi's); a resume from that checkpoint; BSP on parameters with uneven
Fuel streams; asynchronous EASGD; GoSGD. The tests below each check one
of them. Blocks is installed by the test command from
``../shared/third_party`` (see the Makefile); where it is not, they skip.
"""

import importlib.util
import json
import os
import re

import numpy as np
import pytest

from mpirun import ROOT, SCRIPTS, run_mpi, run_mpi_configs

pytestmark = pytest.mark.theano

RANKS, STEPS, BATCH = 2, 4, 8


def _configs(checkpoint):
    """The main loops of the shared launch: blocks_fit.py's options."""
    return {
        # 2 epochs, then resumed to 4 from its checkpoint by "resumed"
        "bsp": ["--monitor", "--blocks-checkpoint", "--checkpoint",
                checkpoint],
        "resumed": ["--seed", 200, "--epochs", 4, "--checkpoint",
                    checkpoint],
        "uneven": ["--step-rule", "momentum", "--short", 2, "--epochs", 1,
                   "--options", json.dumps({"mode": "params"})],
        "easgd": ["--rule", "easgd", "--step-rule", "momentum",
                  "--options", json.dumps({"tau": 2})],
        "gosgd": ["--rule", "gosgd", "--step-rule", "momentum", "--monitor",
                  "--options", json.dumps({"p": 0.5, "seed": 1})],
    }


def _blocks_model():
    """tests/mpi/blocks_model.py; skips, with the reason, where Blocks
    cannot be used."""
    pytest.importorskip(
        "theano", reason="Theano is tested in .venv-theano (numpy < 1.24); "
        "`make test` runs this file there too")
    if importlib.util.find_spec("blocks") is None \
            or importlib.util.find_spec("fuel") is None:
        pytest.skip("Blocks/Fuel are not installed: `make venv-theano` "
                    "installs them from ../shared/third_party/blocks-*.tar.gz "
                    "and PyPI when ../shared is present")
    spec = importlib.util.spec_from_file_location(
        "blocks_model", os.path.join(SCRIPTS, "blocks_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every configuration of :func:`_configs` in one job on 2 ranks:
    ``(out_dir, {name: [rank results]})``."""
    _blocks_model()
    tmp = tmp_path_factory.mktemp("blocks")
    out = tmp / "out"
    return out, run_mpi_configs("blocks_fit.py", RANKS, out,
                                _configs(tmp / "ck"), timeout=420)


@pytest.fixture(scope="module")
def reference():
    """One process, no tmpi: a function ``(step_rule, epochs, short)`` ->
    the parameters after each epoch, trained from rank 0's initial weights
    on the batches of all ranks at once (the ranks that have one)."""
    bm = _blocks_model()
    built = {}

    def run(step_rule, epochs, short=0):
        if step_rule not in built:
            _, _, algorithm, _ = bm.build(100, step_rule)  # rank 0's seed
            algorithm.initialize()
            start = [v.get_value() for v in _state(algorithm)]
            built[step_rule] = algorithm, start
        algorithm, start = built[step_rule]
        for v, value in zip(_state(algorithm), start):
            v.set_value(value)
        x, y = bm.data(STEPS, BATCH, RANKS)
        own = [STEPS - (short if r == RANKS - 1 else 0) for r in range(RANKS)]
        after = []
        for _ in range(epochs):
            for k in range(STEPS):
                rows = np.concatenate([
                    np.arange((k * RANKS + r) * BATCH,
                              (k * RANKS + r + 1) * BATCH)
                    for r in range(RANKS) if k < own[r]])
                algorithm.process_batch({"features": x[rows],
                                         "targets": y[rows]})
            after.append([v.get_value() for v in algorithm.parameters])
        return after

    return run


def _state(algorithm):
    return list(algorithm.parameters) + [v for v, _ in
                                         algorithm.step_rule_updates]


def _flat(params):
    return np.concatenate([np.ravel(p) for p in params])


def _check_equal_ranks(results):
    for other in results[1:]:
        np.testing.assert_array_equal(_flat(other["params"]),
                                      _flat(results[0]["params"]))


def test_bsp_on_two_ranks_equals_one_process_on_the_doubled_batch(
        trained, reference):
    runs = trained[1]["bsp"]
    # ranks started from different weights; rank 0's were broadcast
    assert np.abs(_flat(runs[0]["initial"])
                  - _flat(runs[1]["initial"])).max() > 0.1
    want = reference("adam", 2)[-1]
    for run in runs:
        assert run["dtype"] == "float64"
        assert run["steps"] == run["iterations_done"] == 2 * STEPS
        for got, ref in zip(run["params"], want):
            np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9)
    _check_equal_ranks(runs)


def test_training_data_monitoring_is_the_mean_over_ranks(trained):
    for name in ("bsp", "gosgd"):
        runs = trained[1][name]
        # each rank's own epoch mean of the cost of its batches
        local = [np.reshape(r["local_costs"], (2, STEPS)).mean(axis=1)
                 for r in runs]
        logged = [r["epoch_costs"] for r in runs]
        np.testing.assert_allclose(logged[0], np.mean(local, axis=0),
                                   rtol=1e-12)
        assert logged[1] == logged[0]
        assert np.abs(local[0] - local[1]).min() > 1e-3   # they differ


def test_blocks_checkpoint_on_rank_0_only_and_tmpi_resume(trained,
                                                          reference):
    out, results = trained
    from blocks.serialization import load_parameters

    # Blocks' Checkpoint: written by rank 0 alone, the final model in it
    assert not (out / "bsp" / "blocks1.tar").exists()
    with open(out / "bsp" / "blocks0.tar", "rb") as f:
        saved = load_parameters(f)
    final = [np.asarray(p) for p in results["bsp"][0]["params"]]
    assert len(saved) == len(final)
    for value in saved.values():
        assert any(value.shape == f.shape and np.array_equal(value, f)
                   for f in final)
    # tmpi's checkpoint: a new main loop (other initial weights) resumes
    # at epoch 2 and ends where 4 uninterrupted epochs end
    want = reference("adam", 4)[-1]
    for run in results["resumed"]:
        assert run["steps"] == 2 * STEPS            # epochs 3 and 4 only
        assert run["iterations_done"] == 4 * STEPS
        assert run["epochs_done"] == 4
        for got, ref in zip(run["params"], want):
            np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9)


def test_uneven_fuel_streams_end_every_epoch_together(trained, reference):
    runs = trained[1]["uneven"]
    # the last rank holds 2 batches fewer; both run STEPS steps, and BSP
    # (parameters, momentum) averages only the ranks that had a batch
    for run in runs:
        assert run["steps"] == run["iterations_done"] == STEPS
    want = reference("momentum", 1, short=2)[-1]
    for run in runs:
        for got, ref in zip(run["params"], want):
            np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9)
    _check_equal_ranks(runs)


@pytest.mark.parametrize("rule", ["easgd", "gosgd"])
def test_easgd_and_gosgd_through_the_extension(trained, rule):
    runs = trained[1][rule]
    if rule == "easgd":
        # asynchronous: rank 0 serves the center and trains not
        assert runs[0]["steps"] == 0
        assert runs[1]["steps"] == 2 * STEPS
    else:
        assert [r["steps"] for r in runs] == [2 * STEPS] * RANKS
        # GoSGD's weights still sum to 1 after every gossip
        for run in runs:
            assert run["total_weight"] == pytest.approx(1.0, abs=1e-12)
    # every rank ends on the center / the weighted consensus, which moved
    _check_equal_ranks(runs)
    start = _flat(runs[0]["initial"])
    assert np.abs(_flat(runs[0]["params"]) - start).max() > 1e-3


def test_models_that_differ_fail_on_every_rank(tmp_path):
    _blocks_model()
    proc = run_mpi("blocks_fit.py", RANKS, "--out", tmp_path, "--hidden",
                   "16,17", check=False, timeout=180)
    assert proc.returncode != 0
    for rank in range(RANKS):
        error = (tmp_path / f"rank{rank}.err").read_text()
        assert error.startswith("ValueError"), error
        assert "parameters differ across ranks" in error, error
        # named by the bricks' paths
        assert "'/mlp/linear_0.b' shape=(17,) dtype=float64 on rank 1" \
            in error, error


def test_bad_arguments_are_named():
    _blocks_model()
    from tmpi_adapters.blocks import TMPISync

    for kwargs, match in [
            ({"rule": "nope"}, "rule='nope' is not a known rule"),
            ({"average_monitoring": "yes"}, "average_monitoring='yes'"),
            ({"checkpoint": 5}, "checkpoint=5 must be a directory"),
            ({"checkpoint": "ck", "checkpoint_every": 0},
             "checkpoint_every=0 must be an integer >= 1"),
            ({"every_n_batches": 3}, r"unknown option\(s\) \['every_n_"),
            ({"lr_scaling": "linear"}, "lr_scaling is not applied"),
            ({"mode": "grads", "every": 2}, "every=2 needs mode='params'")]:
        with pytest.raises(ValueError, match=match):
            TMPISync(**kwargs)


def test_gradient_averaging_needs_gradient_descent():
    bm = _blocks_model()
    from blocks.algorithms import UpdatesAlgorithm
    from blocks.main_loop import MainLoop
    from tmpi_adapters.blocks import TMPISync

    _, model, algorithm, _ = bm.build(1)
    plain = UpdatesAlgorithm(updates=list(algorithm.updates))
    x, y = bm.data(1, 4, 1)
    loop = MainLoop(plain, bm.stream(x, y, 4), model=model,
                    extensions=[TMPISync("bsp")])
    with pytest.raises(ValueError, match="needs a GradientDescent "
                                         "algorithm .* use mode='params'"):
        loop.run()


def test_zoo_blocks_mlp_learns_the_digits_on_two_ranks():
    _blocks_model()
    pytest.importorskip("sklearn", reason="the zoo's digits come with "
                        "scikit-learn")
    proc = run_mpi(os.path.join(ROOT, "zoo", "blocks_mlp.py"), RANKS,
                   "--epochs", 2, "--hidden", 32, timeout=300)
    out = proc.stdout
    # rank 0 alone prints one line per epoch and the final line
    assert out.count("epoch 1/2: train_cost=") == 1, out
    final = re.search(r"final: test_accuracy=([\d.]+) rule=bsp ranks=2",
                      out)
    assert final, out
    assert float(final.group(1)) > 0.85
