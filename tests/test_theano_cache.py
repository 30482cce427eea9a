"""Theano's compile cache across processes (tmpi_adapters.theano_cache).

A second process that compiles the same training function loads every C
module from the cache (none compiled, whatever its ``PYTHONHASHSEED``)
and computes bit for bit what the compiling process computed; a change of
the generated code, of a compile flag or of an op's parameter gives
another key (a compile, never a stale module); genuinely unversioned ops
stay unversioned.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.theano

theano = pytest.importorskip(
    "theano", reason="Theano is tested in .venv-theano (numpy < 1.24)")
pytest.importorskip("lasagne", reason="Lasagne comes with Theano")

import numpy as np  # noqa: E402
import theano.tensor as T  # noqa: E402
from theano.gof import Apply, CLinker, FunctionGraph, Op  # noqa: E402

from tmpi_adapters import theano_cache  # noqa: E402

_TESTS = os.path.dirname(os.path.abspath(__file__))

# One training run of the gmodels MLP (Dot22, Dot22Scalar, the
# CrossentropySoftmax ops, DimShuffle, Elemwise...): what the cache holds
# for it and what it computed.
_SCRIPT = r"""
import json, sys
import numpy as np
import theano
from theano.gof import cc, op
from theano.gof.cc import get_module_cache
sys.path.insert(0, sys.argv[1])
import gmodels

train, params, _ = gmodels.build("theano", "adam", 3)
rs = np.random.RandomState(0)
losses = []
for _ in range(3):
    x = rs.rand(8, 6).astype(theano.config.floatX)
    y = rs.randint(0, 3, 8).astype("int32")
    losses.append(float(train(x, y)))
print(json.dumps({
    "compiled": get_module_cache().stats[2],
    "losses": [l.hex() for l in losses],
    "params": [p.get_value().tobytes().hex() for p in params],
    "patched": hasattr(cc.CLinker.cmodule_key, "_tmpi_original"),
    "cop_stable": op.COp.c_code_cache_version.__name__ == "stable_cop_version",
}))
"""


def _run(compiledir, hashseed, cache="1"):
    env = dict(os.environ, PYTHONHASHSEED=str(hashseed),
               TMPI_THEANO_CACHE=cache,
               THEANO_FLAGS="base_compiledir=%s" % compiledir)
    # the .pth set-up prepends tmpi's flags once per process tree; ours must
    # be read afresh (the user's flags come last and win)
    env.pop("_TMPI_THEANO_FLAGS_SET", None)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, _TESTS], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The same training compiled by a process on an empty cache, then by
    one on the cache it left (another hash seed); and the cache folder."""
    compiledir = str(tmp_path_factory.mktemp("theano_cache"))
    return _run(compiledir, 1), _run(compiledir, 2), compiledir


def test_second_process_compiles_nothing(two_processes):
    first, second, _ = two_processes
    assert first["patched"] and first["cop_stable"]
    assert first["compiled"] >= 5         # Dot22, crossentropy, dimshuffle..
    assert second["compiled"] == 0, second


def test_cached_modules_compute_what_fresh_ones_did(two_processes):
    first, second, _ = two_processes
    assert second["losses"] == first["losses"]
    assert second["params"] == first["params"]


def test_cache_off_is_theano_unchanged(two_processes):
    # TMPI_THEANO_CACHE=0: Theano's own methods; on the same cache they
    # compile again what only the patch made cacheable (Dot22, Dot22Scalar,
    # the two crossentropy ops, DimShuffle), and compute the same numbers.
    first, _, compiledir = two_processes
    got = _run(compiledir, 5, cache="0")
    assert not got["patched"] and not got["cop_stable"]
    assert got["compiled"] >= 5, got
    assert got["losses"] == first["losses"]
    assert got["params"] == first["params"]


# -- keys, in process: no compile ---------------------------------------

@pytest.fixture(autouse=True, scope="module")
def _installed():
    theano_cache.install()      # the .pth hook did it; idempotent
    assert hasattr(CLinker.cmodule_key, "_tmpi_original")


def _linker(outputs, inputs):
    fg = FunctionGraph(inputs, outputs, clone=True)
    return CLinker().accept(fg)


def _key(outputs, inputs):
    return _linker(outputs, inputs).cmodule_key()


def _dot22(dtype="float64"):
    x, y = T.matrix(dtype=dtype), T.matrix(dtype=dtype)
    return [T.blas._dot22(x, y)], [x, y]


def _theano_key(outputs, inputs):
    return CLinker.cmodule_key._tmpi_original(_linker(outputs, inputs))


def test_empty_props_ops_get_a_version_with_the_source_digest():
    x, b = T.matrix(), T.vector()
    y = T.ivector()
    xent = T.nnet.crossentropy_softmax_argmax_1hot_with_bias(x, b, y)
    for graph in (_dot22(), (list(xent), [x, b, y])):
        assert _theano_key(*graph)[0] == ()     # Theano: unversioned
        version, sig = _key(*graph)
        assert version and sig == _theano_key(*graph)[1]
        mark, scheme, digest = version[-1]
        assert (mark, scheme) == (theano_cache.MARK, theano_cache.SCHEME)
        src = _linker(*graph).get_src_code()
        assert digest == theano_cache._digest([src])
        assert _key(*graph) == (version, sig)   # deterministic


def test_code_change_with_the_same_declared_version_changes_the_key(
        monkeypatch):
    before = _key(*_dot22())
    original = T.blas.Dot22.c_code

    def c_code(self, *args):
        return original(self, *args) + "\n/* other code */\n"

    monkeypatch.setattr(T.blas.Dot22, "c_code", c_code)
    after = _key(*_dot22())
    assert after[0][:-1] == before[0][:-1]    # Theano's items: the same
    assert after[0][-1] != before[0][-1]      # the source: not
    assert after != before


def test_compile_flag_change_changes_the_key(monkeypatch):
    before = _key(*_dot22())
    ldflags = T.blas.ldflags

    def other_flags(libs=True, flags=False, libs_dir=False,
                    include_dir=False):
        got = ldflags(libs=libs, flags=flags, libs_dir=libs_dir,
                      include_dir=include_dir)
        return got + ["-DTMPI_OTHER_FLAG"] if flags else got

    monkeypatch.setattr(T.blas, "ldflags", other_flags)
    after = _key(*_dot22())
    assert "-DTMPI_OTHER_FLAG" in after[1][1]  # the compile args
    assert after != before


def test_op_parameter_and_type_change_the_key():
    x = T.matrix()
    assert _key([x.dimshuffle(1, 0)], [x]) != _key([x.dimshuffle(0, 1, "x")],
                                                   [x])
    assert _key(*_dot22("float64")) != _key(*_dot22("float32"))


def test_cop_version_is_the_same_in_every_process():
    code = ("import theano.tensor as T\n"
            "print(T.matrix().dimshuffle(1, 0).owner.op"
            ".c_code_cache_version())\n")
    seen = set()
    for seed in (1, 2):
        env = dict(os.environ, PYTHONHASHSEED=str(seed))
        out = subprocess.run([sys.executable, "-c", code], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        seen.add(out.stdout.strip().splitlines()[-1])
    assert len(seen) == 1, seen
    op = T.matrix().dimshuffle(1, 0).owner.op
    assert str(op.c_code_cache_version()) in seen


def test_cop_version_follows_its_c_code(monkeypatch):
    op = T.matrix().dimshuffle(1, 0).owner.op
    before = op.c_code_cache_version()
    monkeypatch.setattr(op, "func_codes", [c + "\n" for c in op.func_codes])
    assert op.c_code_cache_version() != before


class _Unversioned(Op):
    """An op with C code and no version: must stay uncached."""
    __props__ = ()

    def make_node(self, x):
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = inputs[0].copy()

    def c_code(self, node, name, inputs, outputs, sub):
        return "Py_XDECREF(%s); %s = (PyArrayObject*)PyArray_NewCopy(%s, " \
               "NPY_ANYORDER);" % (outputs[0], outputs[0], inputs[0])


class _Prepared(_Unversioned):
    """Versioned, no props, but changes itself before the thunk is made."""

    def c_code_cache_version(self):
        return (1,)

    def prepare_node(self, node, storage_map, compute_map, impl):
        pass


def test_genuinely_unversioned_ops_stay_unversioned():
    x = T.vector()
    assert _key([_Unversioned()(x)], [x])[0] == ()
    assert _key([_Prepared()(x)], [x])[0] == ()


def test_a_versioned_op_without_props_is_cached():
    class _Versioned(_Unversioned):
        def c_code_cache_version(self):
            return (1,)

    x = T.vector()
    version = _key([_Versioned()(x)], [x])[0]
    assert version and version[1] == (theano_cache.MARK, "no-props")
