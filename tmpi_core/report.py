"""``tmpi-report``: PNG plots of runs recorded with a :class:`~tmpi_core.Recorder`.

This module's one job is drawing: it reads runs with
:func:`tmpi_core.runs.read_run` and takes the record format from
:mod:`tmpi_core.runs`.

Usage::

    tmpi-report runs/bsp                      # plots into runs/bsp/
    tmpi-report runs/bsp runs/easgd -o plots  # two runs side by side

Writes ``time_breakdown.png`` (stacked calc / comm / wait seconds per rank,
one panel per run) and, for the loss and every other recorded metric,
``<metric>.png`` (the mean over ranks against step and against wall time,
one line per run, labelled by the run directory's name). Needs matplotlib
(``pip install "tmpi[report]"``); nothing else in tmpi does.
"""

import argparse
import os
import re
import sys

import numpy as np

from tmpi_core.runs import LINE_FIELDS, PARTS, read_run

__all__ = ["main", "plot_runs"]

_COLORS = {"calc": "#4c72b0", "comm": "#dd8452", "wait": "#c44e52"}


def main(argv=None):
    """Run ``tmpi-report``; returns the exit status.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        int: 0 on success. Exits with status 2 and a message for a
        directory without records or without matplotlib.
    """
    parser = argparse.ArgumentParser(
        prog="tmpi-report",
        description="PNG plots of runs recorded with record=RUN_DIR: time in "
        "compute, exchange and waiting per rank, loss and metric curves; "
        "several runs side by side.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="a directory written by tmpi's recorder")
    parser.add_argument("-o", "--out", metavar="OUT_DIR", default=None,
                        help="where to write the PNGs (default: RUN_DIR for "
                        "one run, ./tmpi-report for several)")
    args = parser.parse_args(argv)
    runs = []
    for run_dir in args.runs:
        try:
            runs.append(read_run(run_dir))
        except ValueError as e:
            parser.error(str(e))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error('matplotlib is needed for the plots: pip install '
                     '"tmpi[report]" (or pip install matplotlib)')
    out = args.out or (args.runs[0] if len(args.runs) == 1 else "tmpi-report")
    labels = _labels(args.runs)
    try:
        written = plot_runs(runs, labels, out)
    except OSError as e:
        parser.error(f"cannot write the plots to {out!r}: {e}")
    for label, run in zip(labels, runs):
        print(_one_line(label, run))
    for path in written:
        print(f"wrote {path}")
    return 0


def plot_runs(runs, labels, out_dir):
    """Draw the PNGs for ``runs`` (from :func:`tmpi_core.read_run`).

    Args:
        runs: recorded runs, as :func:`~tmpi_core.read_run` returns them.
        labels: one legend label per run.
        out_dir: directory for the PNGs (created if missing).

    Returns:
        list of the paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    written = [_time_breakdown(runs, labels, out_dir)]
    for metric in _metrics(runs):
        written.append(_curves(runs, labels, metric, out_dir))
    return written


# -- figures ------------------------------------------------------------------

def _time_breakdown(runs, labels, out_dir):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.5 + 2.6 * len(runs), 4.0), layout="constrained")
    axes = fig.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    for ax, run, label in zip(axes, runs, labels):
        totals = {p: np.array([sum(line[p] for line in lines)
                               for lines in run["ranks"]]) for p in PARTS}
        ranks = np.arange(len(run["ranks"]))
        bottom = np.zeros(len(ranks))
        for part in PARTS:
            ax.bar(ranks, totals[part], bottom=bottom, color=_COLORS[part],
                   label=part, width=0.7)
            bottom += totals[part]
        steps = "/".join(sorted({str(len(lines)) for lines in run["ranks"]
                                 if lines}))
        ax.set_title(f"{label}\n({steps} steps per rank)", fontsize=10)
        ax.set_xticks(ranks)
        ax.set_xlabel("rank")
    axes[0].set_ylabel("seconds in steps")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("time per rank: compute, exchange, waiting for other ranks",
                 fontsize=11)
    return _save(fig, out_dir, "time_breakdown.png")


def _curves(runs, labels, metric, out_dir):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    for run, label in zip(runs, labels):
        steps, values, times = _mean_curve(run["ranks"], metric)
        if not len(steps):
            continue
        ranks = sum(1 for lines in run["ranks"]
                    if any(metric in line for line in lines))
        name = f"{label} (mean of {ranks} ranks)" if ranks > 1 else label
        line, = by_step.plot(steps, values, label=name)
        by_time.plot(times, values, color=line.get_color(), label=name)
    from matplotlib.ticker import MaxNLocator

    by_step.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_step.set_xlabel("step")
    by_step.set_ylabel(metric)
    by_time.set_xlabel("wall time (s)")
    by_step.legend(fontsize=8)
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} per step (recorded on every training rank)",
                 fontsize=11)
    return _save(fig, out_dir, f"{_filename(metric)}.png")


def _mean_curve(ranks, metric):
    """Steps, the metric's mean over ranks at each step, and each step's
    wall time (when the last rank finished it, from the first step's start)."""
    values, ends = {}, {}
    starts = [lines[0]["time"] - sum(lines[0][p] for p in PARTS)
              for lines in ranks if lines]
    t0 = min(starts) if starts else 0.0
    for lines in ranks:
        for line in lines:
            if metric not in line:
                continue
            step = line["step"]
            values.setdefault(step, []).append(line[metric])
            ends[step] = max(ends.get(step, -np.inf), line["time"] - t0)
    steps = np.array(sorted(values))
    return (steps, np.array([np.mean(values[s]) for s in steps]),
            np.array([ends[s] for s in steps]))


# -- helpers ------------------------------------------------------------------

def _metrics(runs):
    """The recorded metric names: loss first, then the others sorted."""
    names = set()
    for run in runs:
        for lines in run["ranks"]:
            for line in lines:
                names.update(k for k in line if k not in LINE_FIELDS)
    return sorted(names, key=lambda n: (n != "loss", n))


def _labels(run_dirs):
    names = [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
    if len(set(names)) < len(names):
        names = [os.path.normpath(d) for d in run_dirs]
    return names


def _filename(metric):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric)


def _save(fig, out_dir, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    return path


def _one_line(label, run):
    ranks = run["ranks"]
    totals = {p: sum(line[p] for lines in ranks for line in lines)
              for p in PARTS}
    steps = "/".join(sorted({str(len(lines)) for lines in ranks if lines}))
    return (f"{label}: {len(ranks)} ranks, {steps} steps per rank; all ranks: "
            + ", ".join(f"{p} {totals[p]:.3g} s" for p in PARTS))


if __name__ == "__main__":
    sys.exit(main())
