"""Theano/Lasagne and PyTensor: ``distributed_grads`` and ``distributed``
on real ranks equal one process on the large batch.

Training runs share launches: per library, one 2-rank job trains every
configuration of :func:`two_rank_configs` and one 3-rank job every one of
:func:`three_rank_configs` (fixture ``graph_job``); each test checks its
configuration's results.
"""

import functools
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gmodels import build
from kmodels import make_data
from mpirun import once_per_key, run_mpi, run_mpi_configs

STEPS, B = 25, 8


def _lib(name):
    """Skip, with the reason, in the environment that lacks ``name``."""
    if name == "theano":
        pytest.importorskip(
            "theano", reason="Theano is tested in .venv-theano (numpy < 1.24); "
            "`make test` runs this file there too")
        pytest.importorskip("lasagne", reason="Lasagne comes with Theano")
    else:
        pytest.importorskip(
            "pytensor", reason="PyTensor is tested in .venv (numpy 2); "
            "`make test` runs this file there too")
    return name


@functools.lru_cache(maxsize=None)
def reference(lib, optimizer, ranks=2):
    """One process, no tmpi, batch ranks*B, the same data order.

    Cached: several tests compare with the same run (do not modify it).
    """
    train, params, _ = build(lib, optimizer, 100)
    x, y = make_data(STEPS * B * ranks)
    losses = []
    for k in range(STEPS):
        sl = slice(k * ranks * B, (k + 1) * ranks * B)
        losses.append(float(train(x[sl].astype(params[0].dtype),
                                  y[sl].astype(np.int32))))
    return [p.get_value() for p in params], losses


CASES = [("theano", "grads", "nesterov"), ("theano", "grads", "adam"),
         ("theano", "updates", "momentum"), ("theano", "updates", "nesterov"),
         ("pytensor", "grads", "adam"), ("pytensor", "updates", "momentum")]

RULES = [
    ("easgd", {"tau": 3, "synchronous": False}),
    ("easgd", {"tau": 3, "synchronous": True}),
    ("gosgd", {"p": 0.5, "seed": 1}),
]


def two_rank_configs(lib):
    """graph_fit.py's options per configuration of ``lib``'s 2-rank job."""
    configs = {f"{entry}-{optimizer}": (
        "--lib", lib, "--entry", entry, "--optimizer", optimizer,
        "--steps", STEPS, "--batch", B) for name, entry, optimizer in CASES
        if name == lib}
    configs["every"] = ("--lib", lib, "--entry", "updates", "--optimizer",
                        "momentum", "--every", 4, "--steps", 10)
    return configs


def three_rank_configs(lib):
    """graph_fit.py's options per configuration of ``lib``'s 3-rank job."""
    return {_rule_name(rule, options): (
        "--lib", lib, "--entry", "updates", "--optimizer", "momentum",
        "--rule", rule, "--steps", 12, "--options", json.dumps(options))
        for rule, options in RULES}


def _rule_name(rule, options):
    return rule + "".join(f"-{k}={v}" for k, v in sorted(options.items()))


@pytest.fixture(scope="module")
def graph_job(tmp_path_factory):
    """``graph_job(lib, ranks)``: the results of one launch on ``ranks``
    ranks that trained every configuration of ``lib``'s job for that
    count, by name; launched on first use."""
    configs = {2: two_rank_configs, 3: three_rank_configs}

    def launch(lib, ranks):
        return run_mpi_configs(
            "graph_fit.py", ranks, tmp_path_factory.mktemp(f"{lib}{ranks}"),
            configs[ranks](lib), timeout=600)

    return once_per_key(launch)


@pytest.mark.parametrize("lib,entry,optimizer", CASES)
def test_two_ranks_equal_large_batch(graph_job, lib, entry, optimizer):
    _lib(lib)
    check_large_batch(graph_job(lib, 2)[f"{entry}-{optimizer}"], lib,
                      optimizer)


def check_large_batch(ranks, lib, optimizer):
    """graph_fit.py's ranks against :func:`reference` on the large batch."""
    want, want_losses = reference(lib, optimizer, len(ranks))
    for r in ranks:
        assert r["dtype"] == "float64"
        for got, ref in zip(r["params"], want):
            np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9)
    # every rank holds the same parameters
    for other in ranks[1:]:
        for a, b in zip(ranks[0]["params"], other["params"]):
            np.testing.assert_array_equal(a, b)
    # the first step's loss is the local half-batch loss of rank 0's
    # broadcast initial weights; their mean over ranks is the large batch's
    np.testing.assert_allclose(
        np.mean([r["losses"][0] for r in ranks]), want_losses[0], rtol=1e-9)


@pytest.mark.parametrize("lib", ["theano", "pytensor"])
def test_periodic_averaging_every_k_then_finalize(graph_job, lib):
    _lib(lib)
    check_every_then_finalize(graph_job(lib, 2)["every"])


def check_every_then_finalize(ranks):
    """graph_fit.py's "every" configuration (--every 4 --steps 10)."""
    # 10 steps, averaged after steps 4 and 8: ranks differ before
    # finalize() and agree after it, on the mean of their values.
    before = [np.concatenate([np.ravel(p) for p in r["before_finalize"]])
              for r in ranks]
    after = [np.concatenate([np.ravel(p) for p in r["params"]])
             for r in ranks]
    for b in before[1:]:
        assert np.abs(before[0] - b).max() > 1e-6
    for a in after[1:]:
        np.testing.assert_array_equal(a, after[0])
    np.testing.assert_allclose(after[0], sum(before) / len(before),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lib", ["theano", "pytensor"])
def test_mismatched_graphs_fail_on_every_rank(lib):
    _lib(lib)
    proc = run_mpi("graph_faults.py", 2, "--lib", lib, "--case", "mismatch",
                   check=False, timeout=120)
    assert proc.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: parameters differ across ranks" in proc.stdout
    assert proc.stdout.count("shape=(6, 17)") == 2


@pytest.mark.parametrize("lib", ["theano", "pytensor"])
def test_exception_in_one_rank_ends_the_job(lib):
    _lib(lib)
    proc = run_mpi("graph_faults.py", 2, "--lib", lib, "--case", "raise",
                   check=False, timeout=120)
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr


@pytest.mark.parametrize("lib", ["theano", "pytensor"])
def test_an_extra_call_on_one_rank_ends_the_job_with_a_timeout(lib):
    # Unequal call counts wait for good without a timeout (documented in
    # docs/RELIABILITY.md); TMPI_EXCHANGE_TIMEOUT bounds the wait.
    _lib(lib)
    proc = run_mpi("graph_faults.py", 2, "--lib", lib, "--case",
                   "extra-call", check=False, timeout=120,
                   env={"TMPI_EXCHANGE_TIMEOUT": 3})
    assert proc.returncode != 0
    assert ("tmpi: rank 0 of 2 has waited 3 s in the BSP parameter average "
            "at step 3 (TMPI_EXCHANGE_TIMEOUT=3)") in proc.stderr, proc.stderr


@pytest.mark.parametrize("lib", ["theano", "pytensor"])
def test_bad_input_names_the_culprit(lib):
    _lib(lib)
    from gmodels import graph_modules

    mod, T = graph_modules(lib)
    dist = importlib.import_module(
        "tmpi_adapters.lasagne" if lib == "theano" else "tmpi_adapters.pytensor")
    w = mod.shared(np.zeros(3), name="w")
    x = T.vector("x")
    with pytest.raises(ValueError, match="keyed by shared variables; key 0 "
                                         "is a TensorVariable"):
        dist.distributed([(x, x + 1)])
    with pytest.raises(ValueError, match="updates is empty"):
        dist.distributed([])
    with pytest.raises(ValueError, match="to average gradients use "
                                         "distributed_grads"):
        dist.distributed([(w, w + 1)], mode="grads")
    with pytest.raises(ValueError, match="mode='params' belongs to "
                                         "distributed"):
        dist.distributed_grads([T.grad((w ** 2).sum(), w)], mode="params")
    with pytest.raises(ValueError, match=r"grads\[0\] is a ndarray"):
        dist.distributed_grads([np.zeros(3)])
    v = mod.shared(np.zeros(2), name="v")
    with pytest.raises(ValueError, match=r"params \['v'\] have no update"):
        dist.distributed([(w, w + 1)], params=[v])
    with pytest.raises(ValueError, match="lr_scaling is not applied"):
        dist.distributed([(w, w + 1)], lr_scaling="linear")
    with pytest.raises(ValueError, match="every=0 must be >= 1"):
        dist.distributed([(w, w + 1)], every=0)
    with pytest.raises(ValueError, match=r"params\[0\] is a TensorVariable"):
        dist.broadcast([x])
    with pytest.raises(TypeError, match="not differentiable"):
        g = dist.distributed_grads([T.grad((w ** 2).sum(), w)])[0]
        T.grad(g.sum(), w)


def test_script_importing_theano_first_gets_blas_and_lasagne_pooling():
    _lib("theano")
    # A user script that imports theano before anything of ours: the
    # interpreter-start hook must already have set the BLAS flags and the
    # downsample alias.
    code = (
        "import theano, theano.tensor as T, numpy as np\n"
        "assert theano.config.blas.ldflags, 'no BLAS'\n"
        "import lasagne\n"
        "from lasagne.layers import InputLayer, Conv2DLayer, MaxPool2DLayer, "
        "DenseLayer, get_output, get_all_params\n"
        "x, y = T.tensor4('x'), T.ivector('y')\n"
        "net = InputLayer((None, 1, 8, 8), x)\n"
        "net = Conv2DLayer(net, 4, 3, pad='same')\n"
        "net = MaxPool2DLayer(net, 2)\n"
        "net = DenseLayer(net, 3, nonlinearity=T.nnet.softmax)\n"
        "assert net.input_shape == (None, 4, 4, 4), net.input_shape\n"
        "loss = lasagne.objectives.categorical_crossentropy("
        "get_output(net), y).mean()\n"
        "params = get_all_params(net, trainable=True)\n"
        "f = theano.function([x, y], loss, updates="
        "lasagne.updates.nesterov_momentum(loss, params, 0.05))\n"
        "rs = np.random.RandomState(0)\n"
        "xs = rs.rand(16, 1, 8, 8); ys = (xs.mean((1, 2, 3)) > 0.5).astype('int32')\n"
        "losses = [float(f(xs, ys)) for _ in range(30)]\n"
        "assert losses[-1] < 0.8 * losses[0], losses\n"
        "ops = [type(n.op).__name__ for n in f.maker.fgraph.toposort()]\n"
        "assert 'Pool' in ops and any('Gemm' in o or 'Dot22' in o or "
        "'CorrMM' in o for o in ops), ops\n"
        "print('OK', losses[0], losses[-1])\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("THEANO_FLAGS", "_TMPI_THEANO_FLAGS_SET")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK")
    assert "NumPy C-API based implementation" not in proc.stderr


@pytest.mark.parametrize("lib", ["theano", "pytensor"])
@pytest.mark.parametrize("rule,options", RULES)
def test_asynchronous_rules_through_distributed_updates(graph_job, lib, rule,
                                                        options):
    _lib(lib)
    results = graph_job(lib, 3)[_rule_name(rule, options)]
    assert len(results) == 3
    check_rule_run(results, rule, options)


def check_rule_run(results, rule, options):
    """graph_fit.py with an asynchronous rule (or synchronous EASGD): the
    server trains not, every rank ends on the center or consensus, which
    moved."""
    ranks = len(results)
    server = rule == "easgd" and not options["synchronous"]
    assert [r["served"] for r in results] == [server] + [False] * (ranks - 1)
    if server:
        assert results[0]["losses"] == []              # the server trains not
    flat = [np.concatenate([np.ravel(p) for p in r["params"]])
            for r in results]
    for f in flat[1:]:
        np.testing.assert_array_equal(f, flat[0])      # center / consensus
    start = np.concatenate([np.ravel(p) for p in results[0]["initial"]])
    assert np.abs(flat[0] - start).max() > 1e-3
