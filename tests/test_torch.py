"""tmpi_adapters.torch on real ranks: BSP equals one process on the large
batch (SGD, momentum, Adam; batch norm, a layer used twice, an unused
layer), overlapped or not, with gradient accumulation; the other rules
reach one model.

The training runs share two launches: a 2-rank job trains every
configuration of :data:`TWO_RANKS` in turn, a 3-rank job every one of
:data:`THREE_RANKS`; each test checks its configuration's results.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch adapter is tested "
                            "in .venv, where torch is installed")

from mpirun import run_mpi_configs  # noqa: E402
from torch_models import reference  # noqa: E402

STEPS, B = 12, 8
OPTIMIZERS = ["sgd", "momentum", "adam"]
OTHER_RULES = [
    ("gosgd", '{"p": 0.5, "seed": 2}'),
    ("easgd", '{"tau": 2, "synchronous": true}'),
    ("bsp", '{"mode": "params", "every": 3}')]

#: torch_fit.py's options per configuration of the 2-rank job (the
#: recorded run's directory is added by the fixture)
TWO_RANKS = {
    # the gradient hooks also test the started requests with Adam
    **{f"overlap-{o}": ("--optimizer", o, "--progress",
                        "test" if o == "adam" else "none")
       for o in OPTIMIZERS},
    **{f"plain-{o}": ("--optimizer", o, "--overlap", 0) for o in OPTIMIZERS},
    **{f"gloo-{overlap}": ("--optimizer", "adam", "--backend", "gloo",
                           "--overlap", overlap) for overlap in (1, 0)},
}
#: the 3-rank job's
THREE_RANKS = {
    "accumulate": ("--optimizer", "momentum", "--accumulate", 3),
    **{rule: ("--rule", rule, "--options", options)
       for rule, options in OTHER_RULES},
}


def _job(tmp_path_factory, ranks, configs):
    out = tmp_path_factory.mktemp(f"ranks{ranks}")
    return run_mpi_configs(
        "torch_fit.py", ranks, out,
        {name: ("--steps", STEPS, "--batch", B, *options)
         for name, options in configs.items()}, timeout=600)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every 2-rank configuration's results, from one launch; ``"rec"``
    recorded its run in the directory ``two_ranks["rec-run"]``."""
    run = tmp_path_factory.mktemp("rec") / "run"
    results = _job(tmp_path_factory, 2,
                   {**TWO_RANKS, "rec": ("--record", run)})
    results["rec-run"] = run
    return results


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory):
    """Every 3-rank configuration's results, from one launch."""
    return _job(tmp_path_factory, 3, THREE_RANKS)


def _same_on_every_rank(results):
    for r in results[1:]:
        assert r["params"] == results[0]["params"]
        assert r["buffers"] == results[0]["buffers"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_bsp_equals_large_batch_overlapped_or_not(two_ranks, optimizer):
    overlapped = two_ranks[f"overlap-{optimizer}"]
    plain = two_ranks[f"plain-{optimizer}"]
    want = reference(optimizer, STEPS, B, 2, 1)
    for results in (overlapped, plain):
        _same_on_every_rank(results)
        for got, ref in zip(results[0]["params"], want):
            np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-6)
    # the same sums in the same order: the same bits
    assert overlapped[0]["params"] == plain[0]["params"]


@pytest.mark.parametrize("overlap", [1, 0])
def test_device_path_through_torch_distributed_equals_mpi(two_ranks,
                                                          overlap):
    # The GPU path's code (buckets as device tensors, a torch.distributed
    # group bootstrapped over MPI) with gloo on the CPU: all but NCCL.
    device = two_ranks[f"gloo-{overlap}"]
    _same_on_every_rank(device)
    want = reference("adam", STEPS, B, 2, 1)
    for got, ref in zip(device[0]["params"], want):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-6)


def test_recorded_run(two_ranks):
    from tmpi_core import read_run

    run = two_ranks["rec-run"]
    results = two_ranks["rec"]
    _same_on_every_rank(results)
    recorded = read_run(run)
    assert len(recorded["ranks"]) == 2
    for lines in recorded["ranks"]:
        assert len(lines) == STEPS
        assert all(line["comm"] + line["wait"] > 0 and line["calc"] >= 0
                   and line["loss"] > 0 for line in lines), lines[:2]
    assert recorded["summary"] is not None


def test_gradient_accumulation_exchanges_once_per_step(three_ranks):
    results = three_ranks["accumulate"]
    _same_on_every_rank(results)
    want = reference("momentum", STEPS, B, 3, 3)
    for got, ref in zip(results[0]["params"], want):
        np.testing.assert_allclose(got, ref, rtol=5e-5, atol=5e-6)


@pytest.mark.parametrize("rule,options", OTHER_RULES)
def test_other_rules_end_with_one_model(three_ranks, rule, options):
    results = three_ranks[rule]
    assert len(results) == 3
    for r in results[1:]:
        np.testing.assert_allclose(r["params"][0], results[0]["params"][0],
                                   rtol=1e-6, atol=1e-7)
    assert all(r["step"] == STEPS for r in results)
    if rule == "gosgd":          # the invariant: weights sum to 1
        for r in results:
            assert r["total_weight"] == pytest.approx(1.0, abs=1e-12)


def _final(stdout):
    line = [ln for ln in stdout.splitlines() if ln.startswith("final:")]
    assert line, stdout
    return dict(kv.split("=") for kv in line[-1].split()[1:])


def test_zoo_resnet_trains_and_resumes_exactly(tmp_path):
    from mpirun import ROOT, run_mpi

    script = f"{ROOT}/zoo/torch_resnet.py"
    straight = run_mpi(script, 2, "--epochs", 3, "--width", 8, timeout=300)
    final = _final(straight.stdout)
    assert float(final["test_accuracy"]) > 0.85, straight.stdout
    ckpt = tmp_path / "ckpt"
    run_mpi(script, 2, "--epochs", 2, "--width", 8, "--checkpoint", ckpt,
            timeout=300)
    resumed = run_mpi(script, 2, "--epochs", 3, "--width", 8,
                      "--checkpoint", ckpt, timeout=300)
    assert "resumed at epoch 2" in resumed.stdout, resumed.stdout
    # model, optimizer (momentum) and rule state came back exactly
    assert _final(resumed.stdout)["test_loss"] == final["test_loss"]


def test_models_that_differ_fail_on_every_rank():
    from mpirun import run_mpi

    proc = run_mpi("torch_bad_input.py", 2, check=False, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    for rank in (0, 1):
        line = (f"case torch-model rank {rank}: ValueError: parameters "
                "differ across ranks")
        assert proc.stdout.count(line) == 1, proc.stdout


def test_bad_arguments_are_named():
    import tmpi_adapters.torch as tmpi_torch

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cases = [
        (dict(model=object()), "model=object must be a torch.nn.Module"),
        (dict(optimizer=None), "optimizer=NoneType must be a "),
        (dict(overlap="yes"), "overlap='yes' must be True, False or None"),
        (dict(bucket_mb=0), "bucket_mb=0 must be a number of MiB > 0"),
        (dict(progress="poll"), "progress='poll' must be 'none' or 'test'"),
        (dict(backend="mpi"), "backend='mpi' must be None"),
        (dict(backend="nccl"), "backend='nccl' needs the model on a CUDA"),
        (dict(rule="sgd"), "rule='sgd' is not a known rule"),
    ]
    for change, match in cases:
        args = dict(model=model, optimizer=optimizer, rule="bsp")
        args.update(change)
        with pytest.raises(ValueError, match=match):
            tmpi_torch.distributed(args.pop("model"), args.pop("optimizer"),
                                   args.pop("rule"), **args)
    # the default overlaps only across hosts: here one host, no buckets
    sync = tmpi_torch.distributed(model, optimizer)
    assert sync.overlap is False and sync.buckets is None
    sync.close()
    other = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="are not in the optimizer"):
        tmpi_torch.distributed(model, other)
