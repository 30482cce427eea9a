"""Training throughput across emulated hosts beside the scaling model's
prediction for the same link.

    python benchmarks/hosts_scaling.py                   # as root
    python benchmarks/hosts_scaling.py --models wrn --repeats 3 \\
        --rate 1gbit --json benchmarks/hosts_scaling.json

It brings up two emulated hosts (``tests/hosts.py``: network namespaces on
a bridge, MPI traffic over TCP through their links, a token bucket of
``--rate`` on each link, each direction) and, per model, launches the zoo
script on three placements, in a rotated order every repetition so drift
on a shared machine hits them alike:

* ``1x1``: one rank on host 1 (the compute reference);
* ``2x1``: one rank on each host (``strategy='auto'`` is ``ar``);
* ``2x2``: two ranks on each host (``'auto'`` is ``hier``: shared memory
  in each host, the leaders over the link).

Models, one thread per rank, the same per-rank batch:

* ``wrn``: ``zoo/keras_wresnet.py`` (Keras 3 on torch, ``TMPISync('bsp')``
  gradient averaging, the WRN-16-4), this interpreter;
* ``vgg``: ``zoo/lasagne_vgg16.py`` (Theano + Lasagne,
  ``distributed_grads``, VGG16 at width 0.125), the Theano environment's
  interpreter.

Samples/s are over the training part of each epoch (the zoo's
``train_samples_per_s`` for the WRN), validation excluded: the model is
of the training step.

After the training runs, an MPI job per multi-host placement times the
exchanger ``'auto'`` picks there (slowest rank, median) over the buffer
sizes of ``--calib-sizes`` and each model's own bytes, with the link idle for ``--calib-gap-ms``
before each call as a step's compute leaves it (the token bucket's burst
refills then). :func:`exchange_s` reads the time of the model's bytes off
these points, linear between the two around it. The prediction of each
placement (:func:`scaling_model.placement_samples_per_s`) then takes:

* ``t_c``, the compute time per step, from the ``1x1`` run (its epoch
  over its steps);
* the model's exchange bytes (``exchange_bytes`` in the zoo's history) and
  its steps per epoch at that placement (a short last batch costs a whole
  step);
* the compute slowdown of more ranks than the machine has cores: every
  emulated host shares this machine's cores (``--cores``, default
  ``os.cpu_count()``); on real hosts the factor is 1.

Beside it, the ``nominal`` prediction is the ring model of
``benchmarks/scaling_model.py`` as it stood, on the link's nominal rate.
The table prints measured and predicted samples/s and their ratios; the
goal is every prediction within +-15 % of the measurement. ``--json``
keeps everything (``notebooks/scaling_model.ipynb`` plots the shipped
``benchmarks/hosts_scaling.json``).

Other jobs on the machine skew the comparison (the ranks on 2 hosts share
its cores with them, the 1x1 run less so): run it on a quiet machine, or
give it the CPU (as root, ``nice -n -15``; with the kernel's autogroup
scheduling, ``sysctl kernel.sched_autogroup_enabled=0`` first, or the
ranks, started in sessions of their own, do not inherit the priority).

``--worker`` is the calibration job itself.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))   # hosts.py, mpirun.py

from hosts_exchange import _rate_bits  # noqa: E402
from scaling import mpiexec_next_to, one_thread_env  # noqa: E402
from scaling_model import (placement_samples_per_s,  # noqa: E402
                           speedups)

__all__ = ["PLACEMENTS", "MODELS", "calibrate", "exchange_s", "train",
           "predict", "table", "plot", "main"]

#: name -> (hosts, ranks per host)
PLACEMENTS = {"1x1": (1, 1), "2x1": (2, 1), "2x2": (2, 2)}

#: name -> (script, default arguments, which interpreter)
MODELS = {
    "wrn": ("zoo/keras_wresnet.py",
            "--depth 16 --width 4 --epochs 4 --batch-size 32", "main"),
    "vgg": ("zoo/lasagne_vgg16.py", "--epochs 3 --batch-size 32", "theano"),
}

DEFAULT_CALIB = "1M,2M,4M,8M,12M,16M"
#: the notebook's latency per message on a TCP network: this host's
#: measured software latency (7.3 us) + 25 us
NOMINAL_ALPHA = 32.3e-6


def _size(text):
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


# -- the calibration job (every rank) ---------------------------------------

def _worker(args):
    from mpi4py import MPI

    from tmpi_core import FlatBuffer, get_context
    from tmpi_core.exchangers import make_exchanger, resolve_strategy

    ctx = get_context()
    comm = ctx.comm
    strategy = resolve_strategy("auto", comm)
    ex = make_exchanger(strategy, comm)
    out = []
    for nbytes in args.sizes:
        buf = FlatBuffer([(nbytes // 4,)], allocate=ex.allocate)
        buf.data.fill(1.0)
        ex.allreduce_sum(buf)
        if not np.allclose(buf.data, comm.size):        # it summed, really
            raise RuntimeError(f"{strategy} did not sum over the ranks")
        times = []
        for _ in range(args.repeats):
            comm.Barrier()
            if args.calib_gap_ms:           # the links idle, as in a step
                time.sleep(args.calib_gap_ms / 1e3)
                comm.Barrier()
            t0 = time.perf_counter()
            ex.allreduce_sum(buf)
            times.append(time.perf_counter() - t0)
        slowest = np.array(times)
        comm.Allreduce(MPI.IN_PLACE, slowest, op=MPI.MAX)
        out.append({"bytes": buf.nbytes,
                    "median_s": float(np.median(slowest))})
        buf = None
    ex.free()
    if ctx.rank == 0:
        with open(args.json, "w") as f:
            json.dump({"strategy": strategy, "ranks": comm.size,
                       "results": out}, f, indent=1)


# -- the driver ----------------------------------------------------------------

def _launch(bed, python, placement, argv, timeout):
    hosts, ppn = PLACEMENTS[placement]
    cmd = [mpiexec_next_to(python), *bed.mpiexec_args(ppn, hosts),
           "-n", str(hosts * ppn), python, *argv]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout, env=one_thread_env(), cwd=ROOT)
    finally:
        from hosts import _sweep
        _sweep(bed)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def calibrate(bed, placement, sizes, repeats, gap_ms, timeout=900):
    """Time the exchanger ``'auto'`` picks at ``placement`` over ``sizes``
    and fit the link's ``alpha`` and ``B`` to it.

    Returns:
        dict: ``strategy``, ``results`` (bytes, median_s), ``alpha``,
        ``bandwidth``.
    """
    before = bed.link_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "calib.json")
        _launch(bed, sys.executable, placement,
                [os.path.abspath(__file__), "--worker", "--json", out,
                 "--calib-sizes", ",".join(str(s) for s in sizes),
                 "--calib-repeats", str(repeats), "--calib-gap-ms",
                 str(gap_ms)], timeout)
        with open(out) as f:
            calib = json.load(f)
    # the proof that the exchange crossed the links: each host sent at
    # least its share of every timed exchange
    calib["link_bytes"] = bed.bytes_since(before)
    n = np.array([r["bytes"] for r in calib["results"]], np.float64)
    t = np.array([r["median_s"] for r in calib["results"]])
    # T(n) = a + n / B, least squares; a may be negative: the token
    # bucket's burst, refilled while the link idled, goes out at once
    slope, calib["intercept_s"] = (float(v) for v in np.polyfit(n, t, 1))
    calib["bandwidth"] = 1.0 / slope
    return calib


def exchange_s(calib, nbytes):
    """One exchange of ``nbytes`` on the calibrated link, in s: linear
    between the two timed sizes around it (beyond them, along the nearest
    segment). Not one line over every size: over this TCP path MPICH's
    Allreduce moves 8 MiB at the link's rate and 16 MiB at 1.45x its time
    (``benchmarks/RESULTS.md``), which no ``alpha + n / B`` follows."""
    n = np.array([r["bytes"] for r in calib["results"]], np.float64)
    t = np.array([r["median_s"] for r in calib["results"]])
    order = np.argsort(n)
    n, t = n[order], t[order]
    k = int(np.clip(np.searchsorted(n, nbytes) - 1, 0, len(n) - 2))
    slope = (t[k + 1] - t[k]) / (n[k + 1] - n[k])
    return max(0.0, float(t[k] + (nbytes - n[k]) * slope))


def train(bed, model, placement, python, extra, timeout=1800):
    """One launch of a zoo script at ``placement``; its ``--history``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "history.json")
        _launch(bed, python, placement,
                [os.path.join(ROOT, MODELS[model][0]), *extra.split(),
                 "--history", out], timeout)
        with open(out) as f:
            record = json.load(f)
    keep = ("samples_per_s", "wall_s", "ranks", "samples_per_rank",
            "steps_per_epoch", "exchange_bytes", "test")
    out = {k: record[k] for k in keep if k in record} | {
        "batch_size": record["args"]["batch_size"]}
    if "train_samples_per_s" in record:      # the WRN: the training steps
        out["fit_samples_per_s"] = record["samples_per_s"]
        out["samples_per_s"] = record["train_samples_per_s"]
    return out


def predict(row, calib, cores, rate_bits):
    """Predicted samples/s of every placement from the ``1x1`` run.

    Returns:
        dict with ``model`` (:func:`scaling_model.placement_samples_per_s`
        on the calibrated exchange of the model's bytes, the shared cores,
        the steps per epoch) and ``nominal`` (the notebook's ring model as
        it stood, on the nominal link: ``B`` = the rate, ``alpha`` =
        :data:`NOMINAL_ALPHA`, each host a machine of its own), each
        placement -> samples/s.
    """
    base = row["median_samples_per_s"]["1x1"]
    one = row["runs"]["1x1"][0]
    # a step's compute on one rank: its epoch over its steps
    step_s = one["samples_per_rank"] / base / one["steps_per_epoch"]
    nbytes = one["exchange_bytes"]
    model, nominal = {"1x1": base}, {"1x1": base}
    for placement, (hosts, ppn) in PLACEMENTS.items():
        if placement == "1x1":
            continue
        run = row["runs"][placement][0]
        model[placement] = placement_samples_per_s(
            ranks=hosts * ppn, step_s=step_s,
            samples_per_rank=run["samples_per_rank"],
            steps_per_epoch=run["steps_per_epoch"],
            exchange_s=exchange_s(calib[placement], nbytes),
            ranks_per_machine=hosts * ppn, cores=cores)
        if rate_bits is not None:
            s = speedups(hosts * ppn, step_s=row["batch"] / base,
                         nbytes=nbytes, alpha=NOMINAL_ALPHA,
                         bandwidth=rate_bits / 8)["bsp"]
            nominal[placement] = float(s) * base
    return {"model": model, "nominal": nominal}


def table(rows, calib):
    """The measured and predicted samples/s, one line per model and
    placement, and the link as each exchanger saw it."""
    lines = []
    for placement, c in calib.items():
        lines.append(f"{placement} ({c['strategy']}): T(n) = "
                     f"{c['intercept_s'] * 1e3:+.2f} ms + n / "
                     f"{c['bandwidth'] / 1e6:.1f} MB/s, fit over "
                     f"{len(c['results'])} sizes")
    head = (f"{'model':>5} {'place':>5} {'measured':>9} {'spread':>17} "
            f"{'model':>8} {'mod/meas':>8} {'nominal':>8} {'nom/meas':>8} "
            f"{'speedup':>8}")
    lines += ["", head, "-" * len(head)]
    for r in rows:
        base = r["median_samples_per_s"]["1x1"]
        pred = r["predicted_samples_per_s"]
        for placement in PLACEMENTS:
            runs = [x["samples_per_s"] for x in r["runs"][placement]]
            meas = r["median_samples_per_s"][placement]
            mod = pred["model"][placement]
            nom = pred["nominal"].get(placement)
            nom_txt = (f"{nom:>8.1f} {nom / meas:>8.3f}" if nom is not None
                       else f"{'-':>8} {'-':>8}")
            lines.append(
                f"{r['model']:>5} {placement:>5} {meas:>9.1f} "
                f"{min(runs):>8.1f}..{max(runs):<8.1f} {mod:>8.1f} "
                f"{mod / meas:>8.3f} {nom_txt} {meas / base:>8.3f}")
    return "\n".join(lines)


def plot(result, path):
    """Measured against predicted samples/s: bars per model and placement
    (measured with its spread over launches, the model, the nominal ring
    model), and each prediction over the measurement with the +-15 % band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (bars, ratio) = plt.subplots(1, 2, figsize=(12, 4))
    labels, x = [], 0
    for r in rows:
        pred = r["predicted_samples_per_s"]
        for placement in PLACEMENTS:
            runs = [v["samples_per_s"] for v in r["runs"][placement]]
            meas = r["median_samples_per_s"][placement]
            bars.bar(x - 0.27, meas, 0.27, color="C0",
                     yerr=[[meas - min(runs)], [max(runs) - meas]],
                     label="measured (median, min..max)" if x == 0 else None)
            bars.bar(x, pred["model"][placement], 0.27, color="C1",
                     label="model" if x == 0 else None)
            nom = pred["nominal"].get(placement)
            if nom is not None:
                bars.bar(x + 0.27, nom, 0.27, color="C7",
                         label="nominal ring model" if x == 0 else None)
            for key, marker, color in (("model", "o", "C1"),
                                       ("nominal", "s", "C7")):
                if placement != "1x1" and key in pred \
                        and placement in pred[key]:
                    ratio.plot(x, pred[key][placement] / meas, marker,
                               color=color, label=key if len(labels) == 1
                               and r is rows[0] else None)
            labels.append(f"{r['model']}\n{placement}")
            x += 1
    ticks = range(len(labels))
    bars.set(ylabel="samples/s", title=f"{result['meta']['rate']} link, "
             f"emulated hosts on {result['meta']['cores']} cores")
    ratio.axhspan(0.85, 1.15, color="C2", alpha=0.15, label="+-15 %")
    ratio.axhline(1.0, color="k", lw=0.8)
    ratio.set(ylabel="predicted / measured", title="prediction error")
    for ax in (bars, ratio):
        ax.set_xticks(list(ticks))
        ax.set_xticklabels(labels, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="wrn,vgg",
                   help=f"comma-separated, from {sorted(MODELS)}")
    p.add_argument("--repeats", type=int, default=3,
                   help="launches per model and placement (default 3)")
    p.add_argument("--rate", default="1gbit",
                   help="each link's rate, tc's words, or 'unlimited' "
                        "(default 1gbit)")
    p.add_argument("--wrn-args", default=MODELS["wrn"][1])
    p.add_argument("--vgg-args", default=MODELS["vgg"][1])
    p.add_argument("--theano-python",
                   default=os.path.join(ROOT, ".venv-theano", "bin", "python"),
                   help="the Theano environment's interpreter (default: the "
                        "Makefile's .venv-theano)")
    p.add_argument("--cores", type=int, default=os.cpu_count(),
                   help="cores the emulated hosts share (default: this "
                        "machine's)")
    p.add_argument("--calib-sizes", default=DEFAULT_CALIB,
                   help=f"exchange sizes timed to fit the link (default "
                        f"{DEFAULT_CALIB})")
    p.add_argument("--calib-repeats", type=int, default=15)
    p.add_argument("--calib-gap-ms", type=float, default=50.0,
                   help="idle time before each timed exchange, as the "
                        "compute of a step leaves the link (default 50)")
    p.add_argument("--json", default=None, help="write everything here")
    p.add_argument("--png", default=None, help="plot measured against "
                   "predicted here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.sizes = [_size(s) for s in args.calib_sizes.split(",") if s]
    except ValueError:
        p.error(f"--calib-sizes={args.calib_sizes!r}: sizes like 512K,4M")
    if len(args.sizes) < 2 or min(args.sizes) < 4:
        p.error("--calib-sizes: two or more sizes of at least 4 bytes")
    if args.worker:
        if not args.json:
            p.error("--worker needs --json")
        return args
    args.model_list = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.model_list) - set(MODELS))
    if unknown or not args.model_list:
        p.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    if args.repeats < 1 or args.calib_repeats < 1 or args.cores < 1:
        p.error("--repeats, --calib-repeats and --cores must be >= 1")
    if "vgg" in args.model_list and not os.path.exists(args.theano_python):
        p.error(f"--theano-python={args.theano_python} does not exist; "
                "`make venv-theano` builds it")
    return args


def main(argv=None):
    args = _parse_args(argv)
    if args.worker:
        return _worker(args)
    from hosts import HostBed, unavailable_reason

    reason = unavailable_reason()
    if reason:
        sys.exit(f"hosts_scaling.py: {reason}")
    rows, calib = [], {}
    started = time.strftime("%Y-%m-%d %H:%M")
    with HostBed(2) as bed:
        bed.set_rate(None if args.rate == "unlimited" else args.rate)
        for model in args.model_list:
            python = (sys.executable if MODELS[model][2] == "main"
                      else args.theano_python)
            extra = args.wrn_args if model == "wrn" else args.vgg_args
            runs = {p: [] for p in PLACEMENTS}
            order = list(PLACEMENTS)
            for i in range(args.repeats):
                for placement in order[i % 3:] + order[:i % 3]:
                    record = train(bed, model, placement, python, extra)
                    runs[placement].append(record)
                    print(f"{model} {placement}: "
                          f"{record['samples_per_s']:.1f} samples/s, load "
                          f"{os.getloadavg()[0]:.2f}", flush=True)
            rows.append({"model": model, "args": extra,
                         "batch": runs["1x1"][0]["batch_size"],
                         "runs": runs,
                         "median_samples_per_s": {
                             p: statistics.median(r["samples_per_s"]
                                                  for r in rs)
                             for p, rs in runs.items()}})
        # the link, timed at the sizes and at each model's own bytes
        sizes = sorted(set(args.sizes) | {
            r["runs"]["1x1"][0]["exchange_bytes"] for r in rows})
        for placement in ("2x1", "2x2"):
            calib[placement] = calibrate(bed, placement, sizes,
                                         args.calib_repeats,
                                         args.calib_gap_ms)
            c = calib[placement]
            sent = min(v["tx"] for v in c["link_bytes"].values())
            print(f"calibration {placement} ({c['strategy']}): "
                  f"{c['intercept_s'] * 1e3:+.2f} ms + n / "
                  f"{c['bandwidth'] / 1e6:.1f} MB/s, {sent / 2**20:.0f} MiB "
                  f"sent by each host, load {os.getloadavg()[0]:.2f}",
                  flush=True)
            for r in c["results"]:
                print(f"  {r['bytes'] / 2**20:6.2f} MiB "
                      f"{r['median_s'] * 1e3:8.2f} ms", flush=True)
    for row in rows:
        row["predicted_samples_per_s"] = predict(
            row, calib, args.cores, _rate_bits(args.rate))
    result = {"meta": {"rate": args.rate, "cores": args.cores,
                       "started": started, "loadavg": os.getloadavg(),
                       "command": "python benchmarks/hosts_scaling.py "
                       + " ".join(argv if argv is not None
                                  else sys.argv[1:])},
              "calibration": calib, "rows": rows}
    print()
    print(table(rows, calib))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.png:
        plot(result, args.png)
    return result


if __name__ == "__main__":
    main()
