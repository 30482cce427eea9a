"""Run Blocks (last commit 2018) and Fuel 0.2.0 on Python 3.11.

Blocks and Fuel are unmaintained; three things Python 3.10+ and Theano
1.0.5 on 3.11 took away stop them, and this module puts each back without
touching either package:

* the ``collections.Iterable``, ``Mapping``, ``Sequence``, ... aliases
  (since Python 3.10 only in :mod:`collections.abc`), which both import;
* ``inspect.getargspec`` (removed in 3.11), which Blocks' bricks and
  ``SimpleExtension`` call;
* Theano's compiled scan, which does not build on 3.11: recurrent bricks
  run Theano's Python scan instead (Theano falls back to it when the
  compiled module cannot be imported).

It also silences the ``pkg_resources`` deprecation warning that
``picklable_itertools`` (a Blocks and Fuel dependency) triggers at import.

:mod:`tmpi_adapters.blocks` calls :func:`install` when imported, so import
it before any ``blocks`` or ``fuel`` submodule::

    import tmpi_adapters.blocks as tmpi_blocks   # first
    from blocks.algorithms import GradientDescent

Each shim only adds what is missing; none replaces a name that exists.
"""

import collections
import collections.abc
import inspect
import sys
import warnings

__all__ = ["install"]

#: the abstract base classes Python 3.9 still served from ``collections``
ABC_NAMES = ("Awaitable", "AsyncIterable", "AsyncIterator", "ByteString",
             "Callable", "Collection", "Container", "Coroutine",
             "Generator", "Hashable", "ItemsView", "Iterable", "Iterator",
             "KeysView", "Mapping", "MappingView", "MutableMapping",
             "MutableSequence", "MutableSet", "Reversible", "Sequence", "Set",
             "Sized", "ValuesView")

_SCAN_EXT = "theano.scan_module.scan_perform_ext"

ArgSpec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")


def getargspec(func):
    """Python 2's ``inspect.getargspec`` on top of ``getfullargspec``.

    Returns:
        ArgSpec: ``(args, varargs, keywords, defaults)``.

    Raises:
        ValueError: for a function with keyword-only parameters or
            annotations, as the original did (use ``inspect.signature``).
    """
    spec = inspect.getfullargspec(func)
    if spec.kwonlyargs or spec.annotations:
        raise ValueError(
            "Function has keyword-only parameters or annotations, use "
            "inspect.signature() API which can support them")
    return ArgSpec(spec.args, spec.varargs, spec.varkw, spec.defaults)


def install():
    """Apply every shim (idempotent); call before importing Blocks' or
    Fuel's submodules.

    Returns:
        list of what was added this time (``'collections.Mapping'``,
        ``'inspect.getargspec'``, ``'python scan'``), empty on later calls.
    """
    added = []
    for name in ABC_NAMES:
        if not hasattr(collections, name) and hasattr(collections.abc, name):
            setattr(collections, name, getattr(collections.abc, name))
            added.append(f"collections.{name}")
    if not hasattr(inspect, "getargspec"):
        inspect.getargspec = getargspec
        added.append("inspect.getargspec")
    if sys.version_info >= (3, 11) and _SCAN_EXT not in sys.modules:
        # ``from . import scan_perform_ext`` then raises ImportError and
        # Theano's scan takes its Python implementation
        sys.modules[_SCAN_EXT] = None
        added.append("python scan")
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated",
                            category=UserWarning,
                            module="picklable_itertools")
    return added
