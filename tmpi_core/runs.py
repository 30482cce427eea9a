"""Recorded runs: their file format, reading them back, and summarising them.

A run directory, as a :class:`~tmpi_core.Recorder` writes it::

    RUN_DIR/meta.json        rank 0, when recording starts: rule configuration,
                             ranks, start time, tmpi version, argv
    RUN_DIR/rank{r}.jsonl    every rank, one JSON line per step (LINE_FIELDS
                             and the recorded metrics)
    RUN_DIR/summary.json     rank 0, when recording ends: per-rank totals and
                             medians, samples/s

This module is the one place that format is spelt out; the recorder (which
writes it) and ``tmpi-report`` (:mod:`tmpi_core.report`, which draws it)
both take it from here. Nothing here talks MPI or times anything.

Example:
    >>> from tmpi_core.runs import read_run, summary_text
    >>> run = read_run("runs/bsp")
    >>> len(run["ranks"])                      # one list of lines per rank
    2
    >>> print(summary_text(run["summary"]))    # the paragraph rank 0 printed
"""

import json
import os

import numpy as np

__all__ = ["LINE_FIELDS", "META_FILE", "PARTS", "SUMMARY_FILE", "job_summary",
           "rank_file", "rank_summary", "read_lines", "read_run",
           "summary_text"]

#: The time parts of a step line, in seconds: compute, exchange, waiting.
PARTS = ("calc", "comm", "wait")
#: The fields of a step line that are not metrics (metrics may not use them).
LINE_FIELDS = frozenset(("step", "epoch", *PARTS, "time", "samples"))
#: Rank 0's description of the run, written when recording starts.
META_FILE = "meta.json"
#: Rank 0's summary of the run, written when recording ends.
SUMMARY_FILE = "summary.json"


def rank_file(rank):
    """The name of rank ``rank``'s step lines in a run directory.

    Args:
        rank: the rank.

    Returns:
        str: ``rank{rank}.jsonl``.
    """
    return f"rank{rank}.jsonl"


def _rank_of(name):
    """The rank a file name in a run directory holds lines of, or None."""
    if name.startswith("rank") and name.endswith(".jsonl") \
            and name[4:-6].isdigit():
        return int(name[4:-6])
    return None


def read_run(run_dir):
    """Read a recorded run directory.

    Args:
        run_dir: a directory written by :class:`~tmpi_core.Recorder`.

    Returns:
        dict with ``meta`` (``meta.json`` or ``{}``), ``summary``
        (``summary.json`` or None) and ``ranks``: one list of record dicts
        per rank file, in rank order.

    Raises:
        ValueError: if the directory holds no record lines.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir!r} is not a directory")
    meta = _read_json(os.path.join(run_dir, META_FILE)) or {}
    summary = _read_json(os.path.join(run_dir, SUMMARY_FILE))
    size = meta.get("ranks")
    if not isinstance(size, int):
        found = [_rank_of(n) for n in os.listdir(run_dir)]
        size = 1 + max((r for r in found if r is not None), default=-1)
    ranks = []
    for r in range(size):
        path = os.path.join(run_dir, rank_file(r))
        ranks.append(read_lines(path) if os.path.exists(path) else [])
    if not any(ranks):
        raise ValueError(
            f"{run_dir!r} holds no records (rank*.jsonl lines); record a run "
            "with TMPISync(..., record=RUN_DIR), distributed(..., "
            "record=RUN_DIR) or a tmpi_core.Recorder")
    return {"meta": meta, "summary": summary, "ranks": ranks}


def read_lines(path):
    """Read one rank's step lines.

    A last line without its newline (cut off by a kill) is dropped; any
    other line that is not JSON is an error.

    Args:
        path: a ``rank{r}.jsonl`` file.

    Returns:
        list of dict: the lines, in file order.

    Raises:
        ValueError: naming the file and line of a damaged line.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:
            if number == len(lines):
                break           # no newline after it: cut off by a kill
            raise ValueError(f"{path}:{number} is not a record line "
                             f"({e})") from None
    return records


def rank_summary(rank, lines):
    """Totals, medians, wall time and samples of one rank's lines.

    Args:
        rank: the rank the lines are from.
        lines: its step lines (:func:`read_lines`).

    Returns:
        dict: one entry of ``summary.json``'s ``per_rank``.
    """
    out = {"rank": rank, "steps": len(lines),
           "total": {p: float(sum(line[p] for line in lines)) for p in PARTS},
           "median": {p: (float(np.median([line[p] for line in lines]))
                          if lines else None) for p in PARTS}}
    busy = sum(out["total"].values())
    out["busy_s"] = busy
    if lines:
        first = lines[0]
        out["wall_s"] = lines[-1]["time"] - (
            first["time"] - sum(first[p] for p in PARTS))
    else:
        out["wall_s"] = 0.0
    counted = [line["samples"] for line in lines if "samples" in line]
    out["samples"] = int(sum(counted)) if counted else None
    out["samples_per_s"] = (out["samples"] / busy
                            if counted and busy > 0 else None)
    if lines and "loss" in lines[-1]:
        out["last_loss"] = lines[-1]["loss"]
    return out


def job_summary(run_dir, config, ranks):
    """The whole job's summary (``summary.json``) from every rank's.

    Args:
        run_dir: the run directory, as the recorder was given it.
        config: the rule's configuration (``meta.json``'s ``config``).
        ranks: every rank's :func:`rank_summary`, in rank order.

    Returns:
        dict: the summary.
    """
    total = {p: float(sum(r["total"][p] for r in ranks)) for p in PARTS}
    samples = [r["samples"] for r in ranks if r["samples"] is not None]
    slowest = max((r["busy_s"] for r in ranks), default=0.0)
    return {
        "run_dir": run_dir,
        "ranks": len(ranks),
        "config": config,
        "steps": [r["steps"] for r in ranks],
        "total": total,
        "samples": int(sum(samples)) if samples else None,
        # the job's throughput: every rank's samples over the time in steps
        # of the slowest rank
        "samples_per_s": (sum(samples) / slowest
                          if samples and slowest > 0 else None),
        "per_rank": ranks,
    }


def summary_text(summary):
    """One paragraph about a run's summary.

    Args:
        summary: the dict :meth:`~tmpi_core.Recorder.close` returns
            (``summary.json``; :func:`job_summary`).

    Returns:
        str: the paragraph rank 0 prints.
    """
    per = [r for r in summary["per_rank"] if r["steps"]]
    rule = (summary.get("config") or {}).get("rule") or "no rule"
    if not per:
        return (f"tmpi: {summary['ranks']} ranks ({rule}) recorded no steps "
                f"in {summary['run_dir']}.")

    def span(part):
        values = [r["total"][part] for r in per]
        lo, hi = min(values), max(values)
        return f"{lo:.3g} s" if np.isclose(lo, hi, rtol=0.005, atol=5e-4) \
            else f"{lo:.3g}-{hi:.3g} s"

    steps = sorted({r["steps"] for r in per})
    total = summary["total"]
    busy = sum(total.values())
    share = 100.0 * (total["comm"] + total["wait"]) / busy if busy else 0.0
    slow = max(per, key=lambda r: r["total"]["calc"])
    text = (
        f"tmpi: {len(per)} of {summary['ranks']} ranks recorded "
        f"{'/'.join(map(str, steps))} steps ({rule}) in {summary['run_dir']}. "
        f"Per rank, calc {span('calc')}, comm {span('comm')}, wait "
        f"{span('wait')}; exchange and waiting take {share:.0f}% of the time "
        f"in steps. Median step on rank {per[0]['rank']}: calc "
        f"{1e3 * per[0]['median']['calc']:.3g} ms, comm "
        f"{1e3 * per[0]['median']['comm']:.3g} ms, wait "
        f"{1e3 * per[0]['median']['wait']:.3g} ms. Most compute: rank "
        f"{slow['rank']} ({slow['total']['calc']:.3g} s).")
    if summary.get("samples_per_s"):
        text += f" {summary['samples_per_s']:.4g} samples/s in all."
    return text + f" Plots: tmpi-report {summary['run_dir']}"


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
