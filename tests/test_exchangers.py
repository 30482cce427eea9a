"""Exchangers on real ranks: ``ar`` is exact to fp32, ``asa16`` within its
stated fp16 error bound, for sizes that do and do not divide by the ranks."""

import numpy as np
import pytest

from mpirun import run_mpi_json
from tmpi_core import EXCHANGERS, FlatBuffer, get_context, make_exchanger


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_exchangers_on_real_ranks(tmp_path, ranks):
    results = run_mpi_json("exchangers.py", ranks, tmp_path)
    for rank, r in enumerate(results):
        for key, v in r.items():
            strategy = key.split(":")[0]
            if strategy == "ar":
                assert v["within_fp32"], (rank, key, v)
            else:
                assert v["within_fp16_bound"], (rank, key, v)
                if ranks > 1:
                    # fp16 really is on the wire: not fp32-exact everywhere
                    assert not v["within_fp32"] or key.endswith(":1"), (key, v)
            # every rank holds the same result
            assert v["checksum"] == results[0][key]["checksum"]


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match=r"strategy='fp8' is not a known "
                                         r"exchanger; choose one of \['ar', "
                                         r"'asa16'\]"):
        make_exchanger("fp8", get_context().comm)


@pytest.mark.parametrize("strategy", sorted(EXCHANGERS))
def test_single_rank_is_identity(strategy):
    buf = FlatBuffer([(5,)])
    buf.pack([np.arange(5.0)])
    make_exchanger(strategy, get_context().comm).allreduce_sum(buf)
    assert buf.data.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("ranks", [2, 3])
def test_persistent_ar_equals_plain_allreduce(tmp_path, ranks):
    results = run_mpi_json("exchangers_persistent.py", ranks, tmp_path)
    for rank, r in enumerate(results):
        assert r["persistent"] is True and r["plain"] is False, r
        cases = {k: v for k, v in r.items() if ":" in k}
        assert len(cases) == 12
        for key, v in cases.items():
            assert v["within_fp32"] and v["ref_within_fp32"], (rank, key, v)
            assert v["equal_to_plain"], (rank, key, v)
            assert v["checksum"] == results[0][key]["checksum"], (rank, key)
        # one request per live buffer, reused across exchanges
        assert r["requests_live"] == 4 and r["plain_requests"] == 0, r
        # a replaced data array gets a new request on the new memory
        assert r["replaced_data_within_fp32"], r
        assert r["requests_after_replace"] == 4, r
        assert r["requests_after_gc"] == 3, r     # a dead buffer's is freed
        assert r["requests_after_free"] == 0, r
        assert r["after_free_within_fp32"], r
        assert r["requests_after_reuse"] == 1, r
        # automatic: persistent from persistent_min_bytes up only
        assert r["auto_within_fp32"], r
        assert r["auto_request_sizes"] == [1001, 300_000], r


def test_ar_without_persistent_collectives(monkeypatch):
    from tmpi_core.exchangers import ar

    monkeypatch.setattr(ar, "has_persistent_allreduce", lambda: False)
    comm = get_context().comm
    assert ar.AllreduceExchanger(comm).persistent is False
    with pytest.raises(ValueError, match=r"persistent=True needs MPI-4 "
                                         r"persistent collectives"):
        ar.AllreduceExchanger(comm, persistent=True)
    with pytest.raises(ValueError, match=r"persistent='yes' must be None"):
        ar.AllreduceExchanger(comm, persistent="yes")
    with pytest.raises(ValueError, match=r"persistent_min_bytes=-1 must be"):
        ar.AllreduceExchanger(comm, persistent_min_bytes=-1)


def test_ar_free_is_idempotent_on_one_rank():
    ex = make_exchanger("ar", get_context().comm)
    buf = FlatBuffer([(3,)])
    buf.pack([np.arange(3.0)])
    ex.allreduce_sum(buf)
    ex.free()
    ex.free()
    ex.allreduce_sum(buf)
    assert buf.data.tolist() == [0, 1, 2]
