"""tmpi_layers' AlexNet and ResNet-50 train on real ranks under every rule.

BSP on 2 ranks equals one process on the doubled batch (AlexNet without
dropout or batch norm: deterministic) and, for ResNet-50 (batch norm: each
rank normalises its own half batch), a serial replay of the two
half-batch gradients averaged; under EASGD, GoSGD and BSP's parameter
averaging the models move and every rank ends on the rule's final model
(GoSGD: the weights sum to 1). Narrowest widths, few steps: compiling
dominates (ResNet-50 compiles with ``compile='quick'``).
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


@pytest.mark.parametrize("lib", ["pytensor", "theano"])
def test_resnet50_bsp_on_two_ranks_equals_the_averaged_half_batch_grads(
        tmp_path, lib):
    _lib(lib)
    from layers_models import build, layer_data

    from tmpi_layers import optim

    ranks = run_mpi_json("layers_fit.py", 2, tmp_path, "--lib", lib,
                         "--model", "resnet50", "--rule", "bsp", "--steps",
                         STEPS, "--batch", B, timeout=600)
    # the reference, serially: rank 0's initial weights; per step each
    # rank's half batch gives gradients and batch statistics (each rank's
    # own running statistics move with them); the averaged gradients take
    # one momentum step; finalize averages the running statistics
    model = build(lib, "resnet50", seed=100)
    lib_ = model.lib
    loss, _, state_updates = model.outputs(training=True)
    params, state = model.params, model.state
    new = {id(v): e for v, e in state_updates}
    assert sorted(new) == sorted(map(id, state))
    half = lib_.function([model.x, model.y],
                         [loss] + lib_.grad(loss, params)
                         + [new[id(v)] for v in state])
    given = [p.type() for p in params]
    apply = lib_.function(given, [], updates=optim.momentum(
        given, params, lib_, lr=0.01, mu=0.9))
    x, y = layer_data(STEPS * B * 2)
    running = [[v.get_value() for v in state] for _ in range(2)]
    losses = []
    for k in range(STEPS):
        idx = np.arange(k * 2 * B, (k + 1) * 2 * B)
        grads = []
        for r in range(2):
            for var, value in zip(state, running[r]):
                var.set_value(value)
            out = half(*model.check_batch(x[idx[r::2]], y[idx[r::2]]))
            losses.append(float(out[0]))
            grads.append(out[1:1 + len(params)])
            running[r] = out[1 + len(params):]
        apply(*[(a + b) / 2 for a, b in zip(*grads)])
    for var, a, b in zip(state, *running):
        var.set_value((a + b) / 2)
    want = _flat(model.get_values())
    initial = _flat(ranks[0]["initial"])
    assert np.abs(want - initial).max() > 1e-4       # the model moved
    for r in ranks:
        assert r["exchange"] == "grads"
        np.testing.assert_allclose(_flat(r["values"]), want, rtol=1e-7,
                                   atol=1e-10)
    # each rank's losses are its half batches' losses in the replay
    for rank, r in enumerate(ranks):
        np.testing.assert_allclose(r["losses"], losses[rank::2], rtol=1e-9)
    assert np.isfinite(losses).all()


@pytest.mark.parametrize("lib", ["pytensor", "theano"])
def test_quick_compile_trains_as_the_optimized_one(lib):
    _lib(lib)
    from layers_models import layer_data

    import tmpi_layers as L

    def model(compile):
        net = L.Sequential([
            L.Conv2D(3, 3, stride=2, pad=1, b=None), L.BatchNorm(), L.ReLU(),
            L.Residual(L.Sequential([L.Conv2D(3, 3, pad="same"),
                                     L.BatchNorm()])),
            L.MaxPool2D(3, 2), L.AvgPool2D(2), L.Dense(3)])
        return L.Model(net, (1, 32, 32), lib=lib, seed=3, dtype="float64",
                       compile=compile)

    x, y = layer_data(8)
    runs = {}
    for compile in L.COMPILES:
        m = model(compile)
        assert m.lib.compile == compile
        step = m.train_step(None, lr=0.1)
        losses = [step(x[k:k + 4], y[k:k + 4])[0] for k in (0, 4)]
        runs[compile] = losses, _flat(m.get_values()), m.val_step()(x, y)
    (l_q, v_q, val_q), (l_o, v_o, val_o) = runs["quick"], runs["optimized"]
    np.testing.assert_allclose(l_q, l_o, rtol=1e-10)
    np.testing.assert_allclose(v_q, v_o, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(val_q, val_o, rtol=1e-10)
    assert np.abs(v_q - _flat(model("quick").get_values())).max() > 1e-3
    with pytest.raises(ValueError, match="compile='fast'"):
        L.backend(lib, "fast")


RULES = [("easgd", {"tau": 2, "synchronous": False}),
         ("gosgd", {"p": 0.5, "seed": 1}),
         ("bsp", {"mode": "params", "every": 2})]


@pytest.mark.parametrize("model,rule,options",
                         [(m,) + r for m in ("alexnet", "resnet50")
                          for r in RULES])
def test_models_train_under_each_rule(tmp_path, model, rule, options):
    _lib("pytensor")
    ranks = 3 if rule == "easgd" else 2
    results = run_mpi_json("layers_fit.py", ranks, tmp_path, "--lib",
                           "pytensor", "--model", model, "--rule", rule,
                           "--options", json.dumps(options), "--steps", 4,
                           "--batch", B,
                           timeout=900)
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
