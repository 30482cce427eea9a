"""Interpreter-start set-up: threads per rank, Theano 1.0.5 and Lasagne 0.1.

Imported by ``tmpi_theano_env.pth`` in site-packages at every interpreter
start, so it is in force before a user script's first ``import theano`` (or
``import numpy``). It imports neither numpy nor Theano, and never raises.

In a process an MPI launcher started, it limits the compute threads to
cores / ranks-on-host unless the user chose a count
(:func:`tmpi_core.threads.limit_at_startup`): a BLAS pool sized at load
would otherwise start a thread per core in every rank.

When Theano is installed it also

* points Theano at a real BLAS: the ``scipy-openblas32`` wheel, whose
  symbols carry a ``scipy_`` prefix, renamed back with ``-D`` macros that
  Theano passes to every BLAS op it compiles (Theano's own BLAS probe fails
  on numpy 1.23);
* keeps Theano's compile cache inside the environment (``sys.prefix``);
* serves ``theano.tensor.signal.downsample`` (renamed ``pool`` in Theano
  0.9, still imported by Lasagne 0.1) from :mod:`tmpi_adapters.lasagne_compat`;
* right after ``import theano``, lets Theano's compile cache keep the C
  modules it would compile again in every process (ops without
  ``__props__``, ``DimShuffle``'s salted hash):
  :func:`tmpi_adapters.theano_cache.install` (``TMPI_THEANO_CACHE=0``
  turns this part off).

Flags are put *before* any ``THEANO_FLAGS`` the user set, so the user's win.
``TMPI_THEANO_ENV=0`` turns all of this off.
"""

import os
import sys

# Fortran BLAS names Theano's C code declares (theano/tensor/blas_headers.py,
# without xerbla_); scipy-openblas32 exports each as scipy_<name>.
_COMMON = ("axpy copy gbmv gemm gemv scal swap symm syrk syr2k trmm trsm "
           "tbmv tbsv tpmv tpsv trmv trsv").split()
_REAL = "dot ger rot rotg rotm rotmg symv sbmv spmv spr spr2 syr syr2".split()
_COMPLEX = "gerc geru hbmv hemm hemv her her2 her2k herk hpmv hpr hpr2".split()
_PER_TYPE = {"s": _REAL, "d": _REAL, "c": _COMPLEX + ["sscal"],
             "z": _COMPLEX + ["dscal"]}
_DOWNSAMPLE = "theano.tensor.signal.downsample"


def blas_ldflags():
    """Theano ``blas.ldflags`` for the scipy-openblas32 wheel, or None."""
    from importlib.util import find_spec

    spec = find_spec("scipy_openblas32")          # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        return None
    libdir = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    if not os.path.exists(os.path.join(libdir, "libscipy_openblas.so")):
        return None
    names = [t + n + "_" for t in "sdcz" for n in _COMMON + _PER_TYPE[t]]
    return "-L%s -lscipy_openblas %s" % (
        libdir, " ".join("-D%s=scipy_%s" % (n, n) for n in names))


def theano_flags(user_flags=""):
    """The ``THEANO_FLAGS`` value: tmpi's defaults, then the user's."""
    ours = ["base_compiledir=%s" % os.path.join(sys.prefix, ".theano")]
    ld = blas_ldflags()
    if ld:
        ours.insert(0, 'blas.ldflags="%s"' % ld)   # quoted: shlex-parsed
    return ",".join(ours + ([user_flags] if user_flags else []))


class _DownsampleAlias:
    """Finder that serves ``theano.tensor.signal.downsample`` lazily.

    Appended to ``sys.meta_path``: asked only after the real finders fail,
    and imports nothing until that module is imported.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _DOWNSAMPLE:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(fullname, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        from tmpi_adapters.lasagne_compat import fill_downsample_module

        fill_downsample_module(module)


class _TheanoImportHook:
    """Finder that runs :func:`tmpi_adapters.theano_cache.install` once
    ``import theano`` has finished.

    First in ``sys.meta_path``: for ``theano`` it asks the other finders
    for the real spec and wraps its loader's ``exec_module``; the module's
    ``__loader__`` is the real loader again afterwards. Any other name it
    leaves to the other finders.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "theano":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        spec.loader = _PatchAfterExec(loader)
        return spec


class _PatchAfterExec:
    """Loader wrapper: the real loader's module, then the cache patch."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        spec = module.__spec__
        spec.loader = module.__loader__ = self.loader
        self.loader.exec_module(module)
        try:
            from tmpi_adapters.theano_cache import install

            install()
        except Exception:  # the cache is an optimisation: never break import
            pass


def _limit_threads():
    # tmpi_core/threads.py by path: importing the package would import
    # numpy, and with it a BLAS pool, before the limit is set.
    from importlib.util import find_spec, module_from_spec, \
        spec_from_file_location

    package = find_spec("tmpi_core")
    if package is None or not package.submodule_search_locations:
        return
    path = os.path.join(list(package.submodule_search_locations)[0],
                        "threads.py")
    spec = spec_from_file_location("_tmpi_startup_threads", path)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    module.limit_at_startup()


def _setup():
    try:
        _limit_threads()
    except Exception:  # never break interpreter start-up
        pass
    if os.environ.get("TMPI_THEANO_ENV", "1") == "0":
        return
    from importlib.util import find_spec

    if find_spec("theano") is None:
        return
    if "_TMPI_THEANO_FLAGS_SET" not in os.environ:
        os.environ["THEANO_FLAGS"] = theano_flags(
            os.environ.get("THEANO_FLAGS", ""))
        # Child processes (mpiexec ranks) inherit the result: don't prepend
        # twice.
        os.environ["_TMPI_THEANO_FLAGS_SET"] = "1"
    if not any(isinstance(f, _DownsampleAlias) for f in sys.meta_path):
        sys.meta_path.append(_DownsampleAlias())
    if os.environ.get("TMPI_THEANO_CACHE", "1") != "0" and \
            "theano" not in sys.modules and \
            not any(isinstance(f, _TheanoImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TheanoImportHook())


try:
    _setup()
except Exception:  # never break interpreter start-up
    pass
