"""How long the test suite spends on the tests that existed at a commit.

    PYTEST_ADDOPTS=--durations=0 bash .ci/run > ci.log 2>&1
    python benchmarks/suite_time.py ci.log --before 06047cd

``.ci/run`` (``make test``) runs pytest once per stage (main environment,
Theano, Keras on JAX, Keras on TensorFlow); with ``--durations=0`` each
stage prints every test's setup, call and teardown seconds. This sums them
per stage, split into the tests that existed at ``--before`` (their ids,
collected there by each environment's pytest in a temporary worktree; a
file that no longer collects there under today's packages is matched by
its test function names) and the tests added since. Stages and
environments are those of the Makefile: ``.venv`` and ``.venv-theano``
collect the old ids.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

__all__ = ["parse_durations", "collect_ids", "main"]

_LINE = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(tests/\S.*?)\s*$")
_SUMMARY = re.compile(r"\b(\d+) passed\b.* in ([\d.]+)s")


def parse_durations(lines):
    """Per pytest run in ``lines``: ``{"tests": {id: seconds}, "wall_s":
    its summary's seconds}`` (setup, call and teardown summed per id)."""
    stages, current = [], None
    for line in lines:
        if "slowest durations" in line:
            current = collections.defaultdict(float)
            stages.append({"tests": current, "wall_s": None})
            continue
        m = _LINE.match(line)
        if m and current is not None:
            current[m.group(3)] += float(m.group(1))
            continue
        m = _SUMMARY.search(line)
        if m and stages and stages[-1]["wall_s"] is None:
            stages[-1]["wall_s"] = float(m.group(2))
            current = None
    return stages


def collect_ids(commit, pythons):
    """Test ids at ``commit``, by each interpreter's pytest, and the test
    function names of files that do not collect there.

    Returns:
        (set of ids, dict file -> set of function names).
    """
    ids, by_name = set(), {}
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach",
                        "-q", tree, commit], check=True)
        try:
            for python in pythons:
                proc = subprocess.run(
                    [python, "-m", "pytest", "tests", "-q", "--collect-only",
                     "-p", "no:cacheprovider"], cwd=tree, text=True,
                    capture_output=True, env=dict(os.environ,
                                                  KERAS_BACKEND="torch"))
                ids |= {line.strip() for line in proc.stdout.splitlines()
                        if line.startswith("tests/") and "::" in line}
                for path in re.findall(r"ERROR (tests/\S+\.py)", proc.stdout):
                    with open(os.path.join(tree, path)) as f:
                        by_name[path] = set(re.findall(
                            r"^def (test_\w+)", f.read(), re.M))
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove",
                            "--force", tree], check=False)
    return ids, by_name


def _is_old(test_id, ids, by_name):
    if test_id in ids:
        return True
    path, _, name = test_id.partition("::")
    return name.split("[")[0] in by_name.get(path, ())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="output of .ci/run with "
                   "PYTEST_ADDOPTS=--durations=0")
    p.add_argument("--before", required=True,
                   help="the commit whose tests count as old")
    p.add_argument("--pythons", default=".venv/bin/python,"
                   ".venv-theano/bin/python",
                   help="interpreters that collect the old ids")
    p.add_argument("--stages", default="main,theano,jax,tensorflow",
                   help="names of the pytest runs, in order")
    p.add_argument("--then", default="main,theano",
                   help="the stages the suite had at --before: their old "
                        "tests are the total (the later stages rerun old "
                        "tests on new backends, which is new coverage)")
    args = p.parse_args(argv)
    with open(args.log) as f:
        stages = parse_durations(f.read().splitlines())
    if not stages:
        p.error(f"{args.log} has no --durations output")
    pythons = [os.path.join(ROOT, x) for x in args.pythons.split(",") if x]
    ids, by_name = collect_ids(args.before, pythons)
    names = args.stages.split(",")
    total_old = 0.0
    print(f"{'stage':<11} {'wall min':>8} {'tests min':>9} {'old':>5} "
          f"{'old min':>8} {'new':>5} {'new min':>8}")
    for i, stage in enumerate(stages):
        old = {k: v for k, v in stage["tests"].items()
               if _is_old(k, ids, by_name)}
        new = {k: v for k, v in stage["tests"].items() if k not in old}
        name = names[i] if i < len(names) else str(i + 1)
        if name in args.then.split(","):
            total_old += sum(old.values())
        print(f"{name:<11} {(stage['wall_s'] or 0) / 60:>8.1f} "
              f"{sum(stage['tests'].values()) / 60:>9.1f} {len(old):>5} "
              f"{sum(old.values()) / 60:>8.1f} {len(new):>5} "
              f"{sum(new.values()) / 60:>8.1f}")
    print(f"the tests of {args.before} in the stages {args.then}: "
          f"{total_old / 60:.1f} min "
          f"({len(ids)} ids collected there"
          + (f"; matched by name in {sorted(by_name)}" if by_name else "")
          + ")")
    return total_old


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
