"""Exchangers on real ranks: ``ar`` is exact to fp32, ``asa16`` within its
stated fp16 error bound, for sizes that do and do not divide by the ranks."""

import numpy as np
import pytest

from mpirun import run_mpi_json
from tmpi_core import EXCHANGERS, FlatBuffer, get_context, make_exchanger
from tmpi_core.exchangers import HalfPrecisionExchanger


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_exchangers_on_real_ranks(tmp_path, ranks):
    results = run_mpi_json("exchangers.py", ranks, tmp_path)
    for rank, r in enumerate(results):
        for key, v in r.items():
            strategy = key.split(":")[0]
            # on one host the hierarchical exchanges send nothing between
            # hosts: their sums are fp32-exact, hier16's too
            if strategy in ("ar", "shm", "shm-allocated", "hier", "hier16"):
                assert v["within_fp32"], (rank, key, v)
            else:
                assert v["within_fp16_bound"], (rank, key, v)
                if ranks > 1:
                    # fp16 really is on the wire: not fp32-exact everywhere
                    assert not v["within_fp32"] or key.endswith(":1"), (key, v)
            # every rank holds the same result
            assert v["checksum"] == results[0][key]["checksum"]


HALF_SPECIAL = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65519.99, 65520.0, 1e9,
     -1e9, 2.0 ** -24, 2.0 ** -25, 1.5 * 2.0 ** -25, 2.0 ** -14, 1e-45,
     -1e-45, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11], dtype=np.float32)


def _fp32_running_sum(chunks):
    acc = chunks[0].astype(np.float32)
    for c in chunks[1:]:
        acc += c.astype(np.float32)
    return acc


def _same_bits(a, b):
    nan = np.isnan(a)
    return bool(np.array_equal(np.isnan(b), nan) and np.array_equal(
        a.view(np.uint16)[~nan], b.view(np.uint16)[~nan]))


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_half_casts_are_bit_exact(backend):
    from tmpi_core.exchangers._half import HalfCasts

    if backend == "torch":
        pytest.importorskip("torch")
    casts = HalfCasts(backend)
    assert casts.backend == backend
    with np.errstate(all="ignore"):
        patterns = np.arange(0, 2**32, 65537, dtype=np.uint64).astype(
            np.uint32).view(np.float32)
        for x in (HALF_SPECIAL, patterns):
            half = np.empty(x.size, np.float16)
            casts.to_half(x, half)
            assert _same_bits(x.astype(np.float16), half)
            back = np.empty(x.size, np.float32)
            casts.to_single(half, back)
            assert np.array_equal(back, half.astype(np.float32),
                                  equal_nan=True)
    rng = np.random.default_rng(7)
    for p in (1, 2, 3, 4):
        # every fp16 bit pattern, and gradient-like values
        chunks = rng.integers(0, 2**16, size=(p, 200_000),
                              dtype=np.uint16).view(np.float16)
        chunks[:, ::2] = rng.standard_normal((p, 100_000)) * 1e-3
        with np.errstate(all="ignore"):
            ref = _fp32_running_sum(chunks)
            acc = np.empty(chunks.shape[1], np.float32)
            out = np.empty(chunks.shape[1], np.float16)
            casts.sum_chunks(chunks, acc, out)
            assert _same_bits(ref.astype(np.float16), out), p
    # float64 rounds once, straight to float16 (not through float32)
    x = np.array([1.0 + 2.0 ** -11 + 2.0 ** -40], np.float64)
    half = np.empty(1, np.float16)
    casts.to_half(x, half)
    assert half[0] == x.astype(np.float16)[0] == np.float16(1.0 + 2.0 ** -10)


def test_half_cast_backend_is_checked(monkeypatch):
    import builtins

    from tmpi_core.exchangers._half import HalfCasts

    with pytest.raises(ValueError, match=r"cast='fast' must be one of"):
        HalfPrecisionExchanger(get_context().comm, cast="fast")
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert HalfCasts("auto").backend == "numpy"
    with pytest.raises(ImportError, match=r"cast='torch' needs torch"):
        HalfCasts("torch")


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match=r"strategy='fp8' is not a known "
                                         r"exchanger; choose one of \['auto', "
                                         r"'ar', 'asa16', 'hier', 'hier16', "
                                         r"'shm'\]"):
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


def test_shm_refuses_ranks_on_several_hosts():
    from mpi4py import MPI

    class TwoHosts(MPI.Intracomm):
        """One rank that claims a peer on another host."""

        def Get_size(self):
            return 2

        def Split_type(self, *args, **kwargs):
            return MPI.COMM_SELF.Dup()

    comm = TwoHosts(MPI.COMM_SELF)
    with pytest.raises(ValueError, match=r"strategy='shm' needs every rank "
                                         r"on one host .* Use strategy='ar'"):
        make_exchanger("shm", comm)


def test_a_buffer_allocator_is_checked():
    with pytest.raises(ValueError, match=r"allocate\(3, float32\) must "
                                         r"return a writable contiguous"):
        FlatBuffer([(3,)], allocate=lambda n, dtype: np.zeros(n + 1, dtype))
    buf = FlatBuffer([(2,), (1,)], allocate=lambda n, d: np.full(n, 0, d))
    assert buf.views[1].shape == (1,)


@pytest.mark.parametrize("ranks", [2, 3])
def test_rules_on_shared_memory_match_allreduce(tmp_path, ranks):
    results = run_mpi_json("shm_rules.py", ranks, tmp_path)
    for r in results:
        assert r["n"] == 5 * 9 + 3
        assert r["max_diff"] <= 1e-5, r          # fp32 summation order only
        # BSP's outputs: the same bits on every rank
        assert r["checksum"] == results[0]["checksum"]


def test_shm_exchanger_refuses_pickling_cleanly():
    import pickle

    ex = make_exchanger("shm", get_context().comm)
    ex.allocate(4, np.float32)
    with pytest.raises(pickle.PicklingError, match="cannot be pickled"):
        pickle.dumps(ex)
