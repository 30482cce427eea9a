"""The hierarchical exchangers (``hier``, ``hier16``): exact sums on ranks
grouped into pretend hosts (``TMPI_PRETEND_HOSTS``), even and uneven, and
across 2 emulated hosts (``tests/hosts.py``), what ``strategy='auto'``
picks, and bad input; one rank in this process."""

import pickle

import numpy as np
import pytest

from hosts import hostbed, run_on_hosts_json
from mpirun import run_mpi_json
from tmpi_core import (FlatBuffer, HierarchicalExchanger,
                       HierarchicalHalfExchanger, get_context, make_exchanger)
from tmpi_core.exchangers import resolve_strategy
from tmpi_core.exchangers.shm import PRETEND_HOSTS_ENV

VARIANTS = ("hier", "hier-1lane", "hier-chunked", "hier16", "hier16-chunked")

bed = hostbed(2)


@pytest.mark.parametrize("ranks, hosts, lanes", [
    (4, "2,2", 2),                  # 2 pretend hosts x 2 ranks
    (3, "2,1", 1),                  # uneven: 2 + 1
])
def test_hier_on_pretend_hosts(tmp_path, ranks, hosts, lanes):
    results = run_mpi_json("hier.py", ranks, tmp_path, timeout=300,
                           env={PRETEND_HOSTS_ENV: hosts})
    _check(results, [int(h) for h in hosts.split(",")], lanes,
           sizes_per_case=4)


def test_hier_across_emulated_hosts(tmp_path, bed):
    """2 hosts x 2 ranks in network namespaces: the hosts are MPI's own
    (``MPI_COMM_TYPE_SHARED``), and the exchange really crosses the links."""
    before = bed.link_bytes()
    results = run_on_hosts_json("hier.py", tmp_path, "--sizes", "7,700,4099",
                                hosts=2, ppn=2, timeout=300,
                                env={PRETEND_HOSTS_ENV: None})
    moved = bed.bytes_since(before)
    _check(results, [2, 2], 2, sizes_per_case=3)
    # each host sent at least one fp32 copy of every buffer it exchanged
    assert all(m["tx"] > 2 * 3 * 4099 * 4 for m in moved.values()), moved


def _check(results, sizes, lanes, *, sizes_per_case):
    ranks = sum(sizes)
    for rank, r in enumerate(results):
        assert r["layout"] == sizes and r["host"] == (rank >= sizes[0]), r
        cases = {k: v for k, v in r["cases"].items() if isinstance(v, dict)}
        # variants x 2 dtypes x sizes x (window, foreign buffer)
        assert len(cases) == len(VARIANTS) * 2 * sizes_per_case * 2
        for key, v in cases.items():
            assert v["exact"] and v["within_bound"], (rank, key, v)
            # every rank holds the same bits
            assert v["checksum"] == results[0]["cases"][key]["checksum"], key
        assert r["cases"]["hier:lanes"] == lanes
        assert r["cases"]["hier-1lane:lanes"] == 1
        assert r["auto"] == {"here": "hier", "one_rank_per_host": "ar",
                             "one_host": "shm"}, r["auto"]
        assert r["bsp"]["exchanger"] == "hier", r["bsp"]
        assert r["bsp"]["max_diff"] <= 1e-5, r["bsp"]
        errors = r["errors"]
        assert f"{PRETEND_HOSTS_ENV}='{ranks},1' must be positive rank " \
            f"counts per pretend host summing to the {ranks} ranks" \
            in errors["pretend"]
        assert errors["between"].startswith("between='fp8' must be one of "
                                            "['ar', 'asa16']")
        assert errors["lanes0"].startswith("lanes=0 must be None")
        assert errors["lanes_bool"].startswith("lanes=True must be None")
        assert errors["lanes_too_many"].startswith(
            f"lanes={min(sizes) + 1} is more than the {min(sizes)} rank(s) "
            f"of the smallest host (ranks per host: {sizes})")
        assert errors["chunk_bytes"].startswith(
            "chunk_bytes=100 must be a whole number of bytes >= 1024")


@pytest.mark.parametrize("strategy", ["hier", "hier16"])
def test_hier_on_one_rank(strategy):
    ex = make_exchanger(strategy, get_context().comm)
    assert ex.name == strategy and ex.hosts == 1 and ex.lanes == 1
    buf = FlatBuffer([(2, 3), (4,)], dtype=np.float64, allocate=ex.allocate)
    buf.pack([np.ones((2, 3)), np.arange(4.0)])
    ex.allreduce_sum(buf)
    assert buf.data.tolist() == [1] * 6 + [0, 1, 2, 3]
    with pytest.raises(pickle.PicklingError, match="cannot be pickled"):
        pickle.dumps(ex)
    ex.free()
    ex.free()


def test_auto_and_bad_pretend_hosts_on_one_rank(monkeypatch):
    comm = get_context().comm
    assert resolve_strategy("auto", comm) == "shm"
    monkeypatch.setenv(PRETEND_HOSTS_ENV, "1")
    assert resolve_strategy("auto", comm) == "shm"
    for bad in ("2", "0,1", "one"):
        monkeypatch.setenv(PRETEND_HOSTS_ENV, bad)
        with pytest.raises(ValueError, match=rf"{PRETEND_HOSTS_ENV}='{bad}' "
                                             r"must be positive rank counts"):
            make_exchanger("auto", comm)


def test_hier_arguments_are_checked():
    comm = get_context().comm
    with pytest.raises(ValueError, match=r"between='fp16' must be one of "
                                         r"\['ar', 'asa16'\]"):
        HierarchicalExchanger(comm, between="fp16")
    with pytest.raises(ValueError, match=r"lanes=2 is more than the 1 "
                                         r"rank\(s\) of the smallest host"):
        HierarchicalHalfExchanger(comm, lanes=2)
    with pytest.raises(ValueError, match=r"lanes=1.5 must be None"):
        HierarchicalExchanger(comm, lanes=1.5)
    with pytest.raises(ValueError, match=r"chunk_bytes=1023 must be a whole "
                                         r"number of bytes >= 1024"):
        HierarchicalExchanger(comm, chunk_bytes=1023)
