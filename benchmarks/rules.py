"""Compare the rules (BSP, EASGD async and sync, GoSGD) on the bundled digits.

    python benchmarks/rules.py                       # 2 and 4 ranks
    python benchmarks/rules.py --ranks 2 --epochs 1,2 --png rules.png
    python benchmarks/rules.py --help

For every rule, rank count and epoch budget it launches
``benchmarks/rules_worker.py`` under ``mpiexec`` (a small Keras MLP,
SGD with momentum, per-rank batch 32) and records the final model's test
accuracy, the wall time of ``fit`` and the samples trained on. It prints
a table, and writes the rows as JSON and a PNG with test accuracy against
wall time and against samples. Runs for one configuration are independent
launches, so a curve's points are separate trainings with more epochs.
Four ranks on a 2-core machine are oversubscribed: compare rules at one
rank count, not rank counts with each other.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RULES = ("bsp", "easgd", "easgd-sync", "gosgd")


def run(rule, ranks, epochs, *, timeout=600):
    """One training run; returns the worker's JSON record."""
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.json")
        cmd = [mpiexec, "-n", str(ranks), sys.executable,
               os.path.join(HERE, "rules_worker.py"), "--rule", rule,
               "--epochs", str(epochs), "--json", out]
        env = dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


def plot(rows, path):
    """Test accuracy against wall time and samples, one line per rule/ranks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = sorted({(r["rule"], r["ranks"]) for r in rows})
    for rule, ranks in keys:
        pts = sorted((r for r in rows if (r["rule"], r["ranks"]) ==
                      (rule, ranks)), key=lambda r: r["epochs"])
        style = "-o" if ranks == min(k[1] for k in keys) else "--s"
        label = f"{rule}, {ranks} ranks"
        axes[0].plot([r["wall_s"] for r in pts],
                     [r["test_accuracy"] for r in pts], style, label=label)
        axes[1].plot([r["samples"] for r in pts],
                     [r["test_accuracy"] for r in pts], style, label=label)
    axes[0].set(xlabel="wall time of fit (s)", ylabel="test accuracy",
                title="accuracy vs time")
    axes[1].set(xlabel="samples trained on (all ranks)",
                ylabel="test accuracy", title="accuracy vs samples")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def table(rows):
    """The rows as a Markdown table."""
    lines = ["| rule | ranks | epochs | test accuracy | wall s | samples |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["ranks"], r["rule"], r["epochs"])):
        lines.append(f"| {r['rule']} | {r['ranks']} | {r['epochs']} | "
                     f"{r['test_accuracy']:.4f} | {r['wall_s']:.2f} | "
                     f"{r['samples']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--ranks", default="2,4")
    p.add_argument("--epochs", default="1,2,4",
                   help="epoch budgets (one run each)")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--png", default=None, help="write the plot here")
    args = p.parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        p.error(f"--rules: unknown {unknown}; choose from {list(RULES)}")
    ranks = [int(n) for n in args.ranks.split(",")]
    epochs = [int(e) for e in args.epochs.split(",")]
    if min(ranks) < 2 or min(epochs) < 1:
        p.error("--ranks must be >= 2 (EASGD and GoSGD need two ranks) and "
                "--epochs >= 1")
    rows = []
    for n in ranks:
        for rule in rules:
            for e in epochs:
                row = run(rule, n, e)
                rows.append(row)
                print(f"{rule:>10} ranks={n} epochs={e}: test_accuracy="
                      f"{row['test_accuracy']:.4f} wall_s={row['wall_s']:.2f}",
                      flush=True)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.png:
        plot(rows, args.png)
        print(f"wrote {args.png}")
    return rows


if __name__ == "__main__":
    main()
