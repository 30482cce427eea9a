"""Shared test set-up: Keras on torch, a launcher for real MPI ranks, and
which tests each environment runs.

Markers (registered in pytest.ini):

* ``long``: soaks and benchmarks at full size. Deselected by default
  (``addopts``); ``make test-long`` runs them.
* ``theano``: needs (or uses, where installed) Theano or Lasagne. Set here
  on every test whose module or name mentions Theano or Lasagne, that is
  parametrised with the value ``"theano"``, or whose own code (or a
  fixture's) imports or names ``"theano"``; a test can also carry it
  itself.
* ``launches``: starts other processes (MPI ranks, a script, a notebook
  kernel). Set here on every test that calls one of :data:`LAUNCHERS`,
  directly, through a helper of its module or through a fixture.

* ``keras``: a TMPISync test, run on every Keras backend: ``make
  test-keras-backends`` runs them again with ``KERAS_BACKEND=jax`` and
  ``tensorflow``. Set here on every test whose module or name says
  ``keras`` or ``tmpisync``, or that is parametrised with the value
  ``"keras"`` (that case only); not on the notebooks (documentation, run
  on torch). In ``tests/test_hosts.py`` (no Keras in its name) that is
  its Keras tests alone, so the backend runs bring the emulated hosts up
  for them, not the rest of that module. A test that needs the torch
  backend skips itself on the others.

``make test-theano`` selects ``theano or not launches``: what needs Theano,
plus the in-process tests (seconds), which check the core on that
environment's numpy < 1.24. A launched core-only test runs the same code as
in .venv, so it runs there only. A test that skips in .venv for want of
Theano but is not marked ``theano`` would run nowhere: in .venv it fails
instead.
"""

import importlib.util
import os
import sys
import types

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
# Tests assert numbers, not speed: one compute thread per process keeps
# oversubscribed runs (3-4 ranks on 2 cores) quick and deterministic.
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Names whose use means a test starts other processes.
LAUNCHERS = frozenset(("run_mpi", "run_mpi_json", "run_mpi_configs",
                       "run_mpi_interrupted", "run_on_hosts", "subprocess",
                       "nbclient"))
_THEANO_WORDS = ("theano", "lasagne")
_KERAS_WORDS = ("keras", "tmpisync")
#: files whose Keras tests run on torch only (see the ``keras`` marker)
_NOT_ON_EVERY_BACKEND = ("test_notebooks.py",)
_TESTS = os.path.dirname(os.path.abspath(__file__)) + os.sep
_HAVE_THEANO = importlib.util.find_spec("theano") is not None


def pytest_collection_modifyitems(config, items):
    # a parameter that takes the value "theano" in one case of a test picks
    # the library in every case of it
    choosers = {}
    for item in items:
        for name, value in _params(item).items():
            if value in _THEANO_WORDS:
                choosers.setdefault(_function_key(item), set()).add(name)
    for item in items:
        if _needs_theano(item, choosers.get(_function_key(item))):
            item.add_marker(pytest.mark.theano)
        if _launches(item):
            item.add_marker(pytest.mark.launches)
        if _uses_keras(item):
            item.add_marker(pytest.mark.keras)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not _HAVE_THEANO and _theano_reason(report) \
            and item.get_closest_marker("theano") is None:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} skips for want of Theano/Lasagne "
            f"({_theano_reason(report)}), but is not marked theano, so the "
            ".venv-theano run does not select it either: mark it "
            "@pytest.mark.theano or parametrise it with 'theano'")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    name = os.path.basename(str(collector.path)).lower()
    if report.skipped and not _HAVE_THEANO and _theano_reason(report) \
            and not any(w in name for w in _THEANO_WORDS):
        report.outcome = "failed"
        report.longrepr = (
            f"{report.nodeid} skips for want of Theano/Lasagne, but its "
            "name does not say so, so the .venv-theano run does not select "
            "it either: put 'theano' or 'lasagne' in the file name")


def _needs_theano(item, choosers):
    if item.get_closest_marker("theano") is not None:
        return True
    words = (os.path.basename(str(item.fspath)) + " " + item.name).lower()
    if any(w in words for w in _THEANO_WORDS):
        return True
    if choosers:
        return any(_params(item).get(name) in _THEANO_WORDS
                   for name in choosers)
    # a test that picks Theano where it is installed (``import theano``,
    # ``lib = "theano"``) in its own code or a fixture's. Not through the
    # helpers it calls: those (``_lib(name)``) serve either library.
    return _code_mentions(item, _names_theano, follow_calls=False)


def _uses_keras(item):
    if item.get_closest_marker("keras") is not None:
        return True
    name = os.path.basename(str(item.fspath))
    if name in _NOT_ON_EVERY_BACKEND:
        return False
    words = (name + " " + item.name).lower()
    return any(w in words for w in _KERAS_WORDS)


def _params(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    return {k: v for k, v in params.items() if isinstance(v, str)}


def _function_key(item):
    return str(item.fspath), getattr(item, "originalname", item.name)


def _launches(item):
    return _code_mentions(item, _names_a_launcher, follow_calls=True)


def _names_theano(code):
    return any(n.split(".")[0] in _THEANO_WORDS for n in code.co_names) or \
        any(isinstance(c, str) and c in _THEANO_WORDS for c in code.co_consts)


def _names_a_launcher(code):
    return not LAUNCHERS.isdisjoint(code.co_names)


def _code_mentions(item, found, *, follow_calls):
    """True if ``found(code)`` holds for the code of the test or of one of
    its fixtures (nested code included), or, with ``follow_calls``, of a
    function of the test suite (tests/) they call by name."""
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in (info.name2fixturedefs.get(name, ())
                           if info is not None else ()):
            functions.append(fixturedef.func)
    seen = set()
    while functions:
        function = functions.pop()
        function = getattr(function, "__wrapped__", function)
        code = getattr(function, "__code__", None)
        if code is None or code in seen \
                or not code.co_filename.startswith(_TESTS):
            continue
        seen.add(code)
        namespace = function.__globals__
        codes = [code]
        while codes:
            current = codes.pop()
            if found(current):
                return True
            codes.extend(c for c in current.co_consts
                         if isinstance(c, types.CodeType))
            if follow_calls:
                functions.extend(namespace[n] for n in current.co_names
                                 if isinstance(namespace.get(n),
                                               types.FunctionType))
    return False


def _theano_reason(report):
    """The skip reason of ``report`` if it mentions Theano or Lasagne."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason if any(w in reason.lower() for w in _THEANO_WORDS) else None
