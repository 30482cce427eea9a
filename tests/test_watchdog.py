"""The exchange timeout turns a rank left waiting for good into an error.

Without it, a rank that makes one exchange more than the others waits in
that collective forever (documented in docs/RELIABILITY.md); with
``TMPI_EXCHANGE_TIMEOUT`` it prints what it waited for and aborts the job.
"""

import os
import subprocess
import sys
import time

import pytest

from mpirun import ROOT, run_mpi, run_mpi_json

import tmpi_core
from tmpi_core import watchdog


@pytest.mark.parametrize("case,exchange", [
    ("extra-call", "BSP gradient exchange"),
    ("easgd-extra", "EASGD elastic exchange"),
])
def test_an_extra_exchange_on_one_rank_ends_the_job(case, exchange):
    t0 = time.monotonic()
    proc = run_mpi("exchange_timeout.py", 2, "--case", case, check=False,
                   timeout=60, env={"TMPI_EXCHANGE_TIMEOUT": 2})
    seconds = time.monotonic() - t0
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert (f"tmpi: rank 0 of 2 has waited 2 s in the {exchange} at step 3 "
            "(TMPI_EXCHANGE_TIMEOUT=2)") in proc.stderr, proc.stderr
    assert "Another rank is not taking part" in proc.stderr
    # the diagnosis: rank 0's last exchanges, the one it waits in marked,
    # each with its bytes and buffer layout
    assert "tmpi: rank 0: its last" in proc.stderr, proc.stderr
    mine = [line for line in proc.stderr.splitlines()
            if line.startswith("tmpi: rank 0   ")]
    assert len(mine) >= 2, proc.stderr
    assert mine[-1].endswith("<- waiting here"), mine
    assert f"step 3, " in mine[-1] and " bytes, layout " in mine[-1], mine
    assert all(" layout " in line for line in mine)
    assert seconds < 30, seconds


def test_a_rank_missing_from_the_stop_agreement_ends_the_job():
    # the agreement's wait is guarded like the rules' exchanges
    t0 = time.monotonic()
    proc = run_mpi("exchange_timeout.py", 2, "--case", "agreement",
                   check=False, timeout=60,
                   env={"TMPI_EXCHANGE_TIMEOUT": 2})
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert ("tmpi: rank 0 of 2 has waited 2 s in the stop agreement "
            "(signals, end of data)") in proc.stderr, proc.stderr
    assert time.monotonic() - t0 < 30


def test_without_a_timeout_the_extra_exchange_waits(tmp_path):
    # The behaviour the timeout exists for: the launcher does not return.
    with pytest.raises(AssertionError, match="timed out|hung|Timeout"):
        run_mpi("exchange_timeout.py", 2, "--case", "extra-call",
                timeout=8, check=False,
                env={"TMPI_EXCHANGE_TIMEOUT": None})


def test_a_slow_rank_within_the_timeout_is_not_killed(tmp_path):
    # rank 1 is 1.5 s late at each of 4 exchanges: 6 s in all, 1.5 s each
    # time, under a 4 s timeout -- the bound is per exchange
    ranks = run_mpi_json("exchange_timeout.py", 2, tmp_path, "--case",
                         "slow", "--sleep", 1.5,
                         env={"TMPI_EXCHANGE_TIMEOUT": 4})
    for r in ranks:
        assert r["timeout"] == 4
        # mean over ranks of (rank + step): step + 0.5
        assert r["means"] == [0.5, 1.5, 2.5, 3.5]


def test_timeout_values_are_checked(monkeypatch):
    monkeypatch.setattr(watchdog, "_timeout", None)
    for off in (None, 0, "0", "off", ""):
        tmpi_core.set_exchange_timeout(off)
        assert tmpi_core.exchange_timeout() is None
    tmpi_core.set_exchange_timeout("30")
    assert tmpi_core.exchange_timeout() == 30.0
    for bad in (-1, "soon", float("inf"), float("nan"), True, [5]):
        with pytest.raises(ValueError, match=r"must be a number of seconds"):
            tmpi_core.set_exchange_timeout(bad)
    tmpi_core.set_exchange_timeout(None)


def test_a_bad_environment_value_is_a_clear_error():
    env = dict(os.environ, TMPI_EXCHANGE_TIMEOUT="ten", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-c",
         "import tmpi_core; tmpi_core.exchange_timeout()"],
        env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert ("ValueError: TMPI_EXCHANGE_TIMEOUT='ten' must be a number of "
            "seconds > 0 (or 0/off to disable)") in proc.stderr, proc.stderr
