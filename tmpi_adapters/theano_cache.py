"""Let Theano 1.0.5 reuse compiled C modules across processes.

Theano keeps a compiled C module in its on-disk cache (``compiledir``) only
when the module's key is *versioned*; an unversioned module lives in a
``tmp*`` folder for one process and is compiled again by the next. Two
defects of Theano 1.0.5 make common modules of an MLP training step
unversioned or unfindable, so every process (every MPI rank of every run)
compiled 4-5 modules again, 10-12 s of CPU each:

1. **Empty** ``__props__``. ``CLinker.cmodule_key_`` builds the key's
   version from, per node, the op's ``c_code_cache_version_apply(node)``,
   the op's ``__props__`` *and* the types' versions, then calls the whole
   key unversioned if any item is falsy. An op without parameters has
   ``__props__ == ()``, so ``Dot22``, ``Dot22Scalar``,
   ``CrossentropySoftmaxArgmax1HotWithBias``,
   ``CrossentropySoftmax1HotWithBiasDx``, ``Softmax``, ``Alloc``... are
   never cached although each declares a C code version (``Gemm``, with
   the same BLAS code and a ``('inplace',)`` prop, is cached).
2. **Hash randomisation**. ``COp.c_code_cache_version`` (``DimShuffle``)
   is ``hash(tuple(self.func_codes))``: the ``hash`` of the C source
   strings, which changes with ``PYTHONHASHSEED`` in every process, so the
   key written by one process is never found by the next.

:func:`install` fixes both by patching two methods (Theano itself is not
edited):

* ``CLinker.cmodule_key`` (the key of a module to compile; not
  ``cmodule_key_``, which Scan and the GPU optimiser also use to hash
  graphs): when Theano's key is unversioned *only* because of empty
  ``__props__`` (every op and type of every node declares a version, the
  ops have no ``prepare_node`` of their own and the key's nodes are the
  linker's nodes), it returns the same key with a version: Theano's items
  with a marker in place of the empty props, plus the SHA-256 of the
  module's complete generated C source. Otherwise the key is unchanged.
* ``COp.c_code_cache_version``: the SHA-256 of the same source strings
  instead of their salted ``hash``; the rest of the version is Theano's.

Why a cache hit stays correct. Theano reuses a module when the whole key
is equal, or when the module hash (source code, version, compile flags,
libraries, NumPy ABI, compiler) is. The key's signature, which we leave
as Theano computed it, already holds the compile flags (including the
``-D`` BLAS renames of ``blas.ldflags``), the libraries and library
dirs, the header dirs, the NumPy ABI, the compiler's version, a hash of
every Theano config option that affects C code, and each node's op
(compared by type and props), input/output types and wiring. What it
lacks for these ops is a version of their C code; the one we add is the
digest of the generated source itself, so a key can only match a module
built from identical source with identical flags: a change of code, of an
op's parameter that reaches the code, or of a flag gives a different key
(a miss and a compile, never a stale module). The source is generated
before ``prepare_node`` runs only for ops whose ``prepare_node`` is
Theano's no-op, so it is the source that is compiled (the linker keeps
it). For ``COp`` the digest names the same C files' content that Theano's
``hash`` did, only the same in every process.

``TMPI_THEANO_CACHE=0`` (or ``TMPI_THEANO_ENV=0``) leaves Theano as it is.
:mod:`tmpi_adapters._theano_env` calls :func:`install` right after
``import theano``.
"""

import hashlib
import os

#: Bumped if the way a version is derived here changes: old entries are
#: then missed (compiled again), never reused.
SCHEME = 1
#: First item of the version item that replaces an op's empty ``__props__``
#: and of the source digest item; names who made the key versioned.
MARK = "tmpi_theano_cache"

_installed = False


def enabled():
    """Whether the environment lets :func:`install` patch Theano."""
    return (os.environ.get("TMPI_THEANO_CACHE", "1") != "0"
            and os.environ.get("TMPI_THEANO_ENV", "1") != "0")


def _digest(texts):
    """SHA-256 of a sequence of str/bytes as an int (stable per content)."""
    h = hashlib.sha256()
    for t in texts:
        if isinstance(t, str):
            t = t.encode("utf-8", "surrogatepass")
        h.update(b"%d:" % len(t))     # length-prefixed: no ambiguous joins
        h.update(t)
    return int(h.hexdigest(), 16)


def stable_cop_version(self):
    """``COp.c_code_cache_version`` without ``hash()``'s per-process salt.

    Theano's: ``(hash(tuple(self.func_codes)),) + (params version,)``. The
    first item becomes the SHA-256 of the same C source strings, so it
    changes exactly when the source does, in every process alike.
    """
    version = (_digest(self.func_codes),)
    if hasattr(self, "params_type"):
        version += (self.params_type.c_code_cache_version(),)
    return version


def versioned_key(linker, key):
    """Theano's ``key``, versioned if it is unversioned only by empty props.

    Returns ``key`` itself unless Theano's key is unversioned and every
    other item of Theano's version is present; then returns
    ``(version, signature)`` with Theano's signature, Theano's version items
    (an empty ``__props__`` replaced by ``(MARK, "no-props")``) and
    ``(MARK, SCHEME, sha256 of the module's generated C source)``.
    """
    if key is None or key[0]:
        return key
    from theano.gof.op import Op

    sig = key[1]
    nodes = list(getattr(linker, "node_order", None) or ())
    key_ops = [e[0] for e in sig[1:]
               if isinstance(e, tuple) and len(e) == 3
               and isinstance(e[0], Op)]
    # the key must describe exactly the linker's nodes, in its order
    if not nodes or len(key_ops) != len(nodes) or \
            any(a is not n.op for a, n in zip(key_ops, nodes)):
        return key
    version = []
    for node in nodes:
        op = node.op
        # an op that changes itself or its node before the thunk is made
        # could generate other code after our digest: leave it alone
        if type(op).prepare_node is not Op.prepare_node:
            return key
        if hasattr(op, "c_code_cache_version_apply"):
            v = op.c_code_cache_version_apply(node)
            if not v:
                return key            # the op really is unversioned
            version.append(v)
        if hasattr(op, "__props__"):
            version.append(tuple(op.__props__) or (MARK, "no-props"))
        for var in list(node.inputs) + list(node.outputs):
            v = var.type.c_code_cache_version()
            if not v:
                return key            # a type is unversioned
            version.append(v)
    # The source the linker will compile (it caches it: module_from_key's
    # get_src_code() and compile_cmodule() use this same text).
    src = linker.get_src_code()
    version.append((MARK, SCHEME, _digest([src])))
    return tuple(version), sig


def install():
    """Patch Theano's key computation (idempotent). Imports Theano."""
    global _installed
    if _installed or not enabled():
        return
    from theano.gof import cc, op

    original = cc.CLinker.cmodule_key

    def cmodule_key(self):
        key = original(self)
        try:
            return versioned_key(self, key)
        except Exception:
            # Theano's own key (unversioned: compiled per process) is always
            # a correct one; a failure here must not cost more than speed.
            return key

    cmodule_key.__doc__ = ("Theano's CLinker.cmodule_key, versioned by "
                           "tmpi_adapters.theano_cache.versioned_key.")
    cmodule_key._tmpi_original = original
    cc.CLinker.cmodule_key = cmodule_key
    op.COp._tmpi_original_version = op.COp.c_code_cache_version
    op.COp.c_code_cache_version = stable_cop_version
    _installed = True
