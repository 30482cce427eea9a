"""Training throughput at 1 and 2 ranks: the Keras WRN and the Lasagne VGG.

    python benchmarks/scaling.py                      # both models, 3 pairs
    python benchmarks/scaling.py --models wrn --pairs 5 --json scaling.json
    python benchmarks/scaling.py --help

For every model it launches the zoo script under ``mpiexec`` at 1 rank and at
2 ranks, alternately (1, 2, 2, 1, 1, 2, ...: drift on a shared machine hits
both alike), with one thread per rank (``OMP_NUM_THREADS=1``,
``TMPI_NUM_THREADS=1``: a rank per core) and the same per-rank batch, and
reads the samples/s the script reports (its ``--history`` JSON):

* ``wrn``: ``zoo/keras_wresnet.py`` (Keras 3 on torch, ``TMPISync('bsp')``,
  gradient averaging), run by this interpreter; samples/s over ``fit``
  (training steps, the per-epoch validation and metric averaging);
* ``vgg``: ``zoo/lasagne_vgg16.py`` (Theano + Lasagne,
  ``distributed_grads``), run by the Theano environment's interpreter
  (``--theano-python``, default the Makefile's ``.venv-theano``); samples/s
  over the training steps (compile and evaluation excluded).

``mpiexec`` is the one next to each interpreter. Speedup is the ratio of
the median samples/s at 2 ranks to that at 1 rank. Gradient averaging makes
2 ranks exactly one model trained with twice the batch, so an epoch has
half the steps: samples/s is the figure that should double.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

__all__ = ["MODELS", "mpiexec_next_to", "one_thread_env", "run", "table", "main"]

# name -> (script, default arguments, which interpreter)
MODELS = {
    "wrn": ("zoo/keras_wresnet.py",
            "--depth 16 --width 4 --epochs 10 --batch-size 32", "main"),
    "vgg": ("zoo/lasagne_vgg16.py", "--epochs 3 --batch-size 32", "theano"),
}


def mpiexec_next_to(python):
    """The `mpiexec` of the environment of interpreter `python`."""
    path = os.path.join(os.path.dirname(python), "mpiexec")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no mpiexec next to {python}; build the environment with `make "
            "venv` / `make venv-theano` (pip install mpich)")
    return path


def one_thread_env():
    """The zoo scripts' environment: Keras on torch, one thread per rank,
    the repository importable."""
    return dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1",
                TMPI_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
                    filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


def run(model, ranks, python, extra, *, timeout=1800):
    """One launch of a zoo script; returns its ``--history`` JSON record."""
    script = MODELS[model][0]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "history.json")
        cmd = [mpiexec_next_to(python), "-n", str(ranks), python,
               os.path.join(ROOT, script), *extra.split(), "--history", out]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout, env=one_thread_env(), cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n"
                f"{proc.stderr[-3000:]}")
        with open(out) as f:
            record = json.load(f)
    record["command"] = " ".join(
        ["mpiexec", "-n", str(ranks), "python", script, *extra.split()])
    return record


def table(rows):
    """One line per model: median samples/s at 1 and 2 ranks and speedup."""
    head = (f"{'model':>6} {'1 rank':>10} {'2 ranks':>10} {'speedup':>8} "
            f"{'per pair':>18} {'runs':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        pairs = r["pair_speedups"]
        lines.append(
            f"{r['model']:>6} {r['median_samples_per_s']['1']:>10.1f} "
            f"{r['median_samples_per_s']['2']:>10.1f} {r['speedup']:>8.3f} "
            f"{min(pairs):>8.3f}..{max(pairs):<8.3f} {len(pairs):>5}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="wrn,vgg",
                   help=f"comma-separated, from {sorted(MODELS)}")
    p.add_argument("--pairs", type=int, default=3,
                   help="launches at each rank count (default 3)")
    p.add_argument("--wrn-args", default=MODELS["wrn"][1],
                   help=f"arguments of keras_wresnet.py (default: "
                        f"{MODELS['wrn'][1]!r})")
    p.add_argument("--vgg-args", default=MODELS["vgg"][1],
                   help=f"arguments of lasagne_vgg16.py (default: "
                        f"{MODELS['vgg'][1]!r})")
    p.add_argument("--theano-python",
                   default=os.path.join(ROOT, ".venv-theano", "bin", "python"),
                   help="the Theano environment's interpreter (default: the "
                        "Makefile's .venv-theano)")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        p.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    if args.pairs < 1:
        p.error(f"--pairs={args.pairs} must be >= 1")
    if "vgg" in models and not os.path.exists(args.theano_python):
        p.error(f"--theano-python={args.theano_python} does not exist; "
                "`make venv-theano` builds it")
    rows = []
    for model in models:
        python = (sys.executable if MODELS[model][2] == "main"
                  else args.theano_python)
        extra = args.wrn_args if model == "wrn" else args.vgg_args
        runs = {1: [], 2: []}
        for i in range(args.pairs):
            for ranks in ((1, 2) if i % 2 == 0 else (2, 1)):
                record = run(model, ranks, python, extra)
                runs[ranks].append(record["samples_per_s"])
                print(f"{model}: {ranks} rank(s) {record['samples_per_s']:.1f} "
                      f"samples/s, load {os.getloadavg()[0]:.2f}", flush=True)
        med = {str(k): statistics.median(v) for k, v in runs.items()}
        rows.append({
            "model": model, "args": extra, "samples_per_s": runs,
            "median_samples_per_s": med,
            "speedup": med["2"] / med["1"],
            "pair_speedups": [b / a for a, b in zip(runs[1], runs[2])],
            "command": record["command"].replace(" -n 1 ", " -n N ").replace(
                " -n 2 ", " -n N "),
        })
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
