"""The benchmark scripts: the scaling model's algebra against closed forms,
and the exchange benchmark on real ranks at a tiny size (so it cannot rot)."""

import json
import os
import sys

import numpy as np
import pytest

from mpirun import ROOT, run_mpi

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import scaling_model  # noqa: E402


def test_fit_recovers_latency_and_bandwidth():
    alpha, bandwidth = 7e-6, 3e9
    n = np.array([2**16, 2**20, 2**24, 2**26], dtype=float)
    for p in (2, 4):
        t = scaling_model.ring_allreduce_s(p, n, alpha, bandwidth)
        a, b = scaling_model.fit_latency_bandwidth(n, t, ranks=p)
        assert a == pytest.approx(alpha, rel=1e-6)
        assert b == pytest.approx(bandwidth, rel=1e-6)


def test_fit_clamps_a_negative_latency_and_rejects_bad_input():
    n = np.array([1e6, 2e6, 4e6])
    a, b = scaling_model.fit_latency_bandwidth(n, n / 1e9 - 1e-5)
    assert a == 0.0 and b > 0
    with pytest.raises(ValueError, match="two or more"):
        scaling_model.fit_latency_bandwidth([1e6], [1e-3])
    with pytest.raises(ValueError, match="ranks=1"):
        scaling_model.fit_latency_bandwidth(n, n / 1e9, ranks=1)


def test_ring_allreduce_closed_form():
    # p = 4, n = 8 MB, alpha = 10 us, B = 1 GB/s, gamma = 1 ns/byte:
    # 6 alpha + 1.5 n / B + 0.75 n gamma
    t = scaling_model.ring_allreduce_s(4, 8e6, 1e-5, 1e9, 1e-9)
    assert t == pytest.approx(6e-5 + 1.5 * 8e-3 + 0.75 * 8e-3)
    assert scaling_model.ring_allreduce_s(1, 8e6, 1e-5, 1e9, 1e-9) == 0.0


def test_speedups_closed_forms():
    kw = dict(step_s=0.1, nbytes=1e7, alpha=1e-5, bandwidth=1e9, gamma=0.0,
              pack_s=0.002, every=4, tau=4, q=0.5)
    p = np.array([1, 2, 64])
    s = scaling_model.speedups(p, **kw)
    t_x = 0.002 + scaling_model.ring_allreduce_s(p, 1e7, 1e-5, 1e9)
    assert s["bsp"] == pytest.approx(np.where(p == 1, 1, p * 0.1 / (0.1 + t_x)))
    assert s["bsp params k=4"][2] == pytest.approx(64 * 0.1 / (0.1 + t_x[2] / 4))
    # GoSGD: no global wait, the cost does not grow with p
    t_g = 0.5 * (1e-5 + 1e7 / 1e9)
    assert s["gosgd q=0.5"][1:] == pytest.approx(p[1:] * 0.1 / (0.1 + t_g))
    # EASGD: one worker at p = 2, then the server's ceiling tau t_c / T_e
    t_e = 2 * (1e-5 + 1e-2)
    assert s["easgd tau=4"][1] == pytest.approx(0.4 / (0.4 + t_e))
    assert s["easgd tau=4"][2] == pytest.approx(min(63 * 0.4 / (0.4 + t_e),
                                                    0.4 / t_e))
    assert all(v[0] == 1.0 for v in s.values())


def test_exchange_benchmark_runs_on_two_ranks(tmp_path):
    out = tmp_path / "exchange.json"
    proc = run_mpi(os.path.join(ROOT, "benchmarks", "exchange.py"), 2,
                   "--sizes", "64K", "--repeats", "3", "--warmup", "1",
                   "--no-wrn", "--json", out, timeout=300)
    assert "ratios of medians" in proc.stdout
    data = json.loads(out.read_text())
    (row,) = data["results"]
    assert row["bytes"] == 65536 and row["repeats"] == 3
    ops = set(data["meta"]["ops"])
    assert {"raw", "ar", "exch", "naive", "asa16", "pack"} <= ops
    assert set(row["median_ms"]) == ops
    assert row["ratios"]["ar/raw"] == pytest.approx(
        row["median_ms"]["ar"] / row["median_ms"]["raw"])
    # the model's fit reads this JSON (a second, twice as slow point)
    slower = dict(row, bytes=4 * 65536, median_ms={
        k: 2 * v for k, v in row["median_ms"].items()})
    inputs = scaling_model.exchange_inputs(
        {"meta": data["meta"], "results": [row, slower]})
    assert inputs["op"] == ("ar (shipped)" if "ar_p" in ops else "ar")
    assert inputs["ranks"] == 2 and inputs["bandwidth"] > 0


def test_branch_free_half_cast_is_bit_exact():
    import fp16_cast

    caster = fp16_cast.HalfCaster(chunk=4096)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65519.99,
                        65520.0, 1e9, -1e9, 2.0 ** -24, 2.0 ** -25,
                        1.5 * 2.0 ** -25, 2.0 ** -14, 1e-45, -1e-45,
                        1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11],
                       dtype=np.float32)
    with np.errstate(all="ignore"):
        patterns = np.arange(0, 2**32, 65537, dtype=np.uint64).astype(
            np.uint32).view(np.float32)
        for x in (special, patterns):
            got = np.empty(x.size, np.float16)
            caster(x, got)
            assert fp16_cast._same_bits(x.astype(np.float16), got)


@pytest.mark.parametrize("ranks", [2, 3])
def test_asa16_cast_backends_give_the_same_bits(ranks):
    proc = run_mpi(os.path.join(ROOT, "benchmarks", "asa16_cast.py"), ranks,
                   "--mib", 0.5, "--repeats", 2, timeout=120)
    assert "same bits: True" in proc.stdout, proc.stdout + proc.stderr
    assert "branch-free" in proc.stdout and "numpy" in proc.stdout


def test_guard_overhead_runs():
    proc = run_mpi(os.path.join(ROOT, "benchmarks", "guard_overhead.py"), 2,
                   "--steps", 20, "--blocks", 2, timeout=120)
    assert "on/off" in proc.stdout, proc.stdout + proc.stderr


def test_compiled_exchange_benchmark_checks_every_mechanism(tmp_path):
    # each mechanism's result is checked against the mean over ranks
    # before it is timed: exit 0 means every one exchanged correctly
    out = tmp_path / "mechanisms.json"
    run_mpi(os.path.join(ROOT, "benchmarks", "compiled_exchange.py"), 2,
            "--values", "1000", "--repeats", "3", "--json", out, timeout=300)
    data = json.loads(out.read_text())
    names = set(data["median_s"])
    assert "host (numpy)" in names
    try:
        import jax  # noqa: F401
        assert {"jax.io_callback", "jax.pure_callback"} <= names
    except ImportError:
        pass
    assert data["over_host"]["host (numpy)"] == 1.0


def test_placement_model_closed_form():
    # 2 ranks, a core each: an epoch is 12 steps of compute + exchange
    kw = dict(step_s=0.1, samples_per_rank=368, steps_per_epoch=12,
              exchange_s=0.05)
    got = scaling_model.placement_samples_per_s(ranks=2, cores=2, **kw)
    assert got == pytest.approx(2 * 368 / (12 * (0.05 + 0.1)))
    # 4 ranks sharing 2 cores: the compute takes twice as long
    four = dict(kw, samples_per_rank=184, steps_per_epoch=6)
    assert scaling_model.placement_samples_per_s(
        ranks=4, cores=2, **four) == pytest.approx(
            4 * 184 / (6 * (0.05 + 0.1 * 2)))
    # real hosts (cores=None): no sharing
    assert scaling_model.placement_samples_per_s(
        ranks=4, **four) == pytest.approx(4 * 184 / (6 * (0.05 + 0.1)))


def test_hosts_scaling_calibration_times_the_auto_exchanger(tmp_path):
    # the calibration job alone, on one host (auto -> shm): it checks the
    # sum over ranks before timing, and the fit reads what it writes
    import hosts_scaling

    out = tmp_path / "calib.json"
    run_mpi(os.path.join(ROOT, "benchmarks", "hosts_scaling.py"), 2,
            "--worker", "--json", out, "--calib-sizes", "64K,256K",
            "--calib-repeats", "3", "--calib-gap-ms", "1", timeout=300)
    calib = json.loads(out.read_text())
    assert calib["strategy"] == "shm" and calib["ranks"] == 2
    assert [r["bytes"] for r in calib["results"]] == [65536, 262144]
    assert all(r["median_s"] > 0 for r in calib["results"])
    # between timed sizes linear, beyond them along the nearest segment
    link = {"results": [{"bytes": 1e6, "median_s": 0.01},
                        {"bytes": 2e6, "median_s": 0.03},
                        {"bytes": 4e6, "median_s": 0.05}]}
    assert hosts_scaling.exchange_s(link, 1.5e6) == pytest.approx(0.02)
    assert hosts_scaling.exchange_s(link, 3e6) == pytest.approx(0.04)
    assert hosts_scaling.exchange_s(link, 5e6) == pytest.approx(0.06)
    assert hosts_scaling.exchange_s(link, 0.5e6) == pytest.approx(0.0)


def test_suite_time_parses_each_pytest_run():
    import suite_time

    log = """
============================= slowest durations ==============================
12.50s call     tests/test_a.py::test_x[full-File too large]
0.50s setup    tests/test_a.py::test_x[full-File too large]
3.00s call     tests/test_b.py::test_y
10 passed, 2 skipped in 20.00s
============================= slowest durations ==============================
1.25s call     tests/test_a.py::test_x[full-File too large]
4 passed, 1 skipped, 3 deselected in 5.50s
""".splitlines()
    first, second = suite_time.parse_durations(log)
    assert first == {"tests": {"tests/test_a.py::test_x[full-File too large]":
                               13.0, "tests/test_b.py::test_y": 3.0},
                     "wall_s": 20.0}
    assert second["tests"] == {
        "tests/test_a.py::test_x[full-File too large]": 1.25}
    assert second["wall_s"] == 5.5
