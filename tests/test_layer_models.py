"""tmpi_layers' AlexNet and ResNet-50 train on real ranks under every rule.

BSP on 2 ranks equals one process on the doubled batch (AlexNet without
dropout or batch norm: deterministic); under EASGD, GoSGD and BSP's
parameter averaging the models move and every rank ends on the rule's
final model (GoSGD: the weights sum to 1). Narrowest widths, few steps:
compiling dominates.
"""

import json
import os
import sys

import numpy as np
import pytest

from mpirun import SCRIPTS, run_mpi_json

sys.path.insert(0, SCRIPTS)

STEPS, B = 3, 4


def _lib(name):
    """Skip, with the reason, in the environment that lacks ``name``."""
    if name == "theano":
        pytest.importorskip(
            "theano", reason="Theano is tested in .venv-theano "
            "(numpy < 1.24); `make test` runs this file there too")
    else:
        pytest.importorskip(
            "pytensor", reason="PyTensor is tested in .venv (numpy 2); "
            "`make test` runs this file there too")
    return name


def _flat(values):
    return np.concatenate([np.ravel(v) for v in values])


@pytest.mark.parametrize("lib", ["pytensor", "theano"])
def test_bsp_on_two_ranks_equals_one_process_on_the_doubled_batch(tmp_path,
                                                                   lib):
    _lib(lib)
    from layers_models import build, layer_data

    ranks = run_mpi_json("layers_fit.py", 2, tmp_path, "--lib", lib,
                         "--model", "alexnet", "--rule", "bsp", "--steps",
                         STEPS, "--batch", B, timeout=600)
    # the reference: rank 0's initial weights, one process, batch 2B
    model = build(lib, "alexnet", seed=100)
    step = model.train_step(None, lr=0.01)
    x, y = layer_data(STEPS * B * 2)
    big = [slice(k * 2 * B, (k + 1) * 2 * B) for k in range(STEPS)]
    losses = [step(x[s], y[s])[0] for s in big]
    want = _flat(model.get_values())
    for r in ranks:
        assert r["exchange"] == "grads"
        np.testing.assert_allclose(_flat(r["values"]), want, rtol=1e-7,
                                   atol=1e-10)
    # the first step's losses: the two half batches of the broadcast start
    np.testing.assert_allclose(np.mean([r["losses"][0] for r in ranks]),
                               losses[0], rtol=1e-9)
    assert np.isfinite(losses).all()


RULES = [("easgd", {"tau": 2, "synchronous": False}),
         ("gosgd", {"p": 0.5, "seed": 1}),
         ("bsp", {"mode": "params", "every": 2})]


# ResNet-50's training graph takes minutes to compile on PyTensor: long
@pytest.mark.parametrize("model,rule,options",
                         [("alexnet",) + r for r in RULES]
                         + [pytest.param("resnet50", *r, marks=pytest.mark.long)
                            for r in RULES])
def test_models_train_under_each_rule(tmp_path, model, rule, options):
    _lib("pytensor")
    ranks = 3 if rule == "easgd" else 2
    results = run_mpi_json("layers_fit.py", ranks, tmp_path, "--lib",
                           "pytensor", "--model", model, "--rule", rule,
                           "--options", json.dumps(options), "--steps", 4,
                           "--batch", B,
                           timeout=2400 if model == "resnet50" else 900)
    server = rule == "easgd"
    assert [r["served"] for r in results] == [server] + [False] * (ranks - 1)
    if server:
        assert results[0]["losses"] == []       # the server trains not
    for r in results[1:] if server else results:
        assert len(r["losses"]) == 4 and np.isfinite(r["losses"]).all()
    # the model moved, and every rank ends on the same one: the center, the
    # weighted consensus or the average (batch norm's statistics too)
    final = [_flat(r["values"]) for r in results]
    for f in final[1:]:
        np.testing.assert_allclose(f, final[0], rtol=1e-12, atol=1e-12)
    assert np.abs(final[0] - _flat(results[0]["initial"])).max() > 1e-4
    if rule == "gosgd":
        # the invariant: the ranks' weights sum to 1 when finalize meets
        for r in results:
            assert r["total_weight"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.long
@pytest.mark.parametrize("model", ["alexnet", "resnet50"])
@pytest.mark.parametrize("rule", ["bsp", "easgd", "gosgd"])
def test_zoo_layers_cnn_learns_digits(tmp_path, model, rule):
    _lib("pytensor")
    from mpirun import ROOT, run_mpi

    history = tmp_path / "history.json"
    ranks = 3 if rule == "easgd" else 2
    proc = run_mpi(os.path.join(ROOT, "zoo", "layers_cnn.py"), ranks,
                   "--model", model, "--rule", rule, "--epochs", 3,
                   "--history", history, timeout=1800)
    final = [line for line in proc.stdout.splitlines()
             if line.startswith("final: ")]
    assert len(final) == 1, proc.stdout
    logs = json.loads(history.read_text())
    # digits (chance 0.1): every rule learns them in 3 epochs
    assert logs["test"]["accuracy"] > 0.7, proc.stdout
    assert logs["samples_per_s"] > 0
