"""Predict data-parallel speedup at 8 to 1024 ranks from measured costs.

    python benchmarks/scaling_model.py                # measure here, predict
    python benchmarks/scaling_model.py --exchange-json exchange.json \\
        --compute-json overhead.json --png scaling_model.png
    python benchmarks/scaling_model.py --model vgg:180:1.2 --help

Inputs, all measured on this machine unless given:

* the exchange's latency ``alpha`` and bandwidth ``B``: a fit of
  ``T(n) = 2 (p-1) alpha + 2 (p-1)/p * n / B`` (ring allreduce, ``p`` the
  measured ranks) to the ``ar`` exchanger's median times over buffer sizes
  (``benchmarks/exchange.py --json``); the pack pass's cost per byte from
  the same run;
* ``gamma``, the local cost of summing one byte of float32 (``np.add``);
* each model's compute time per step ``t_c`` (one rank, its batch) and
  gradient bytes ``n`` (``benchmarks/keras_overhead.py --json``: the
  unsynchronised step), and any ``--model name:step_ms:MiB``.

Model (no overlap of communication with computation, which is how tmpi runs
today; weak scaling: every rank keeps its batch, so ``p`` ranks do ``p``
times the samples per step; speedup ``S(p)`` = samples/s at ``p`` ranks over
samples/s at 1 rank):

* ring allreduce on a network of per-message latency ``alpha_net = alpha +
  link latency`` and bandwidth ``B_net``: ``T_ar = 2 (p-1) alpha_net +
  2 (p-1)/p * n / B_net + (p-1)/p * n * gamma``;
* BSP every step: ``S = p t_c / (t_c + t_pack + T_ar)``;
* BSP parameters every ``k`` steps (local SGD): ``S = p t_c / (t_c +
  (t_pack + T_ar) / k)``;
* EASGD, asynchronous, period ``tau``: rank 0 serves ``p-1`` workers one at
  a time; an exchange costs it ``T_e = 2 (alpha_net + n / B_net) + 3 n
  gamma``; ``S = min((p-1) tau t_c / (tau t_c + T_e), tau t_c / T_e)`` --
  the second term is the server's ceiling;
* GoSGD, push probability ``q``: per step a rank sends one message with
  probability ``q`` and merges ``q`` messages on average, with no global
  wait: ``S = p t_c / (t_c + q (alpha_net + n / B_net + 2 n gamma))``.

The model counts throughput, not accuracy: local SGD, EASGD and GoSGD need
more samples than BSP to reach the same accuracy (``benchmarks/rules.py``).
``notebooks/scaling_model.ipynb`` explains it with the plot.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

__all__ = ["NETWORKS", "fit_latency_bandwidth", "ring_allreduce_s",
           "speedups", "placement_samples_per_s", "predict", "measure_gamma",
           "table", "plot", "main"]

# name -> (bandwidth in bytes/s, link latency in s added to the measured
# software latency). 10 Gb/s: Ethernet with TCP (tens of microseconds a
# message); 100 Gb/s: InfiniBand / RoCE with RDMA (a few microseconds).
NETWORKS = {
    "10 Gb/s": (10e9 / 8, 25e-6),
    "100 Gb/s": (100e9 / 8, 3e-6),
}
DEFAULT_RANKS = (2, 8, 16, 32, 64, 128, 256, 512, 1024)


def fit_latency_bandwidth(nbytes, seconds, ranks=2):
    """Fit ``T(n) = 2 (p-1) alpha + 2 (p-1)/p * n / B`` to measurements.

    A least-squares fit of ``T = a + b n`` in relative error (times span
    orders of magnitude, so each point weighs by ``1 / T``); ``a < 0`` is
    clamped to 0 and ``b`` refitted.

    Args:
        nbytes: message sizes in bytes.
        seconds: the measured times.
        ranks: ``p`` of the measurement (>= 2).

    Returns:
        (alpha, B): latency per ring step in s, bandwidth in bytes/s.

    Raises:
        ValueError: for fewer than two points, ``ranks < 2`` or a fit whose
            slope is not positive.
    """
    n = np.asarray(nbytes, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    if n.size < 2 or n.size != t.size:
        raise ValueError(f"need two or more (size, time) pairs, got {n.size} "
                         f"sizes and {t.size} times")
    if ranks < 2:
        raise ValueError(f"ranks={ranks}: an allreduce needs >= 2 ranks")
    w = 1.0 / t
    (a, b), *_ = np.linalg.lstsq(np.stack([w, n * w], axis=1), t * w,
                                 rcond=None)
    if a < 0:
        a = 0.0
        b = float(np.sum(n * w * t * w) / np.sum((n * w) ** 2))
    if b <= 0:
        raise ValueError("time does not grow with size: no bandwidth to fit")
    steps = 2 * (ranks - 1)
    return a / steps, steps / ranks / b


def ring_allreduce_s(p, nbytes, alpha, bandwidth, gamma=0.0):
    """Ring allreduce time: ``2(p-1) alpha + 2(p-1)/p n/B + (p-1)/p n gamma``.

    Zero at ``p = 1``. Works on arrays of ``p``.
    """
    p = np.asarray(p, dtype=np.float64)
    return (2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / bandwidth
            + (p - 1) / p * nbytes * gamma)


def speedups(p, *, step_s, nbytes, alpha, bandwidth, gamma=0.0,
             ar_gamma=None, pack_s=0.0, every=4, tau=4, q=0.1):
    """Predicted speedup of every rule at ``p`` ranks (see the module doc).

    Args:
        p: rank counts (array-like).
        step_s: compute time per step of one rank, ``t_c``.
        nbytes: bytes of the gradients / parameters, ``n``.
        alpha: per-message latency (s).
        bandwidth: bytes/s.
        gamma: seconds to sum one byte locally.
        ar_gamma: ``gamma`` inside the allreduce; default ``gamma``. Zero
            where ``bandwidth`` was fitted to allreduces that already
            include their sums (the ``measured`` network).
        pack_s: the pack pass before an allreduce (s).
        every: BSP parameter averaging period ``k``.
        tau: EASGD period.
        q: GoSGD push probability.

    Returns:
        dict rule label -> numpy array of speedups.
    """
    p = np.asarray(p, dtype=np.float64)
    t_c = float(step_s)
    if ar_gamma is None:
        ar_gamma = gamma
    t_x = pack_s + ring_allreduce_s(p, nbytes, alpha, bandwidth, ar_gamma)
    t_e = 2 * (alpha + nbytes / bandwidth) + 3 * nbytes * gamma
    t_g = q * (alpha + nbytes / bandwidth + 2 * nbytes * gamma)
    # one rank exchanges with nobody: every rule is 1 there
    one = p == 1
    easgd = np.minimum((p - 1) * tau * t_c / (tau * t_c + t_e),
                       tau * t_c / t_e)
    return {
        "bsp": np.where(one, 1.0, p * t_c / (t_c + t_x)),
        f"bsp params k={every}": np.where(one, 1.0,
                                          p * t_c / (t_c + t_x / every)),
        f"easgd tau={tau}": np.where(one, 1.0, easgd),
        f"gosgd q={q:g}": np.where(one, 1.0, p * t_c / (t_c + t_g)),
    }


def placement_samples_per_s(*, ranks, step_s, samples_per_rank,
                            steps_per_epoch, exchange_s, ranks_per_machine=None,
                            cores=None):
    """BSP samples/s of one placement of ``ranks`` ranks.

    An epoch of each rank is ``steps_per_epoch`` steps, each a compute and
    an exchange; a short last batch costs a whole step (its exchange moves
    every byte, and the optimizer's update, the framework's dispatch do not
    shrink with the batch):

        ``T = steps x (T_x + t_c x max(1, ranks_per_machine / cores))``

    and samples/s is ``ranks x samples_per_rank / T``. The factor is for
    emulated hosts that share one machine's ``cores`` (more ranks than
    cores share them); on real hosts leave ``cores`` ``None`` (factor 1).

    Args:
        ranks: number of ranks.
        step_s: compute time of one step on one rank with a core to itself
            (s).
        samples_per_rank: each rank's share of an epoch.
        steps_per_epoch: steps per epoch at this placement.
        exchange_s: one exchange of the step's bytes at this placement (s);
            0 for one rank.
        ranks_per_machine: ranks sharing the ``cores`` (default ``ranks``).
        cores: cores of the machine the ranks share, or ``None``.

    Returns:
        float.
    """
    slow = 1.0
    if cores is not None:
        slow = max(1.0, (ranks_per_machine or ranks) / cores)
    epoch_s = steps_per_epoch * (exchange_s + step_s * slow)
    return ranks * samples_per_rank / epoch_s


def predict(models, exchange, *, ranks=DEFAULT_RANKS, networks=NETWORKS,
            every=4, tau=4, q=0.1):
    """Speedup rows for every model, network and rule.

    Args:
        models: list of dicts with ``name``, ``step_s``, ``nbytes``.
        exchange: dict with ``alpha``, ``bandwidth``, ``gamma``, and
            ``pack_per_byte`` (s/byte), all measured.
        ranks: the ``p`` columns.
        networks: name -> (bandwidth, link latency); a ``measured`` network
            (this host, the fitted alpha and B, whose fit already holds the
            allreduce's sums) is added first.

    Returns:
        list of dicts: model, network, rule, alpha, bandwidth, speedup (list
        over ``ranks``).
    """
    nets = {"measured": (exchange["bandwidth"], 0.0)}
    nets.update(networks)
    rows = []
    for m in models:
        pack_s = exchange["pack_per_byte"] * m["nbytes"]
        for net, (bandwidth, link) in nets.items():
            alpha = exchange["alpha"] + link
            s = speedups(ranks, step_s=m["step_s"], nbytes=m["nbytes"],
                         alpha=alpha, bandwidth=bandwidth,
                         gamma=exchange["gamma"],
                         ar_gamma=0.0 if net == "measured" else None,
                         pack_s=pack_s,
                         every=every, tau=tau, q=q)
            for rule, values in s.items():
                rows.append({"model": m["name"], "network": net,
                             "rule": rule, "alpha": alpha,
                             "bandwidth": bandwidth,
                             "ranks": list(ranks),
                             "speedup": [float(v) for v in values]})
    return rows


def measure_gamma(nbytes, repeats=20):
    """Seconds per byte of ``np.add(a, b, out=a)`` on float32 (median)."""
    count = max(1, int(nbytes) // 4)
    a = np.zeros(count, np.float32)
    b = np.ones(count, np.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.add(a, b, out=a)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / (4 * count)


def exchange_inputs(data, *, op=None):
    """alpha, B and the pack cost per byte from ``exchange.py``'s JSON.

    Args:
        data: the parsed JSON.
        op: the column fitted; default the ``ar`` exchanger as shipped: the
            ``ar`` column below ``persistent_min_bytes`` (8 MiB) and
            ``ar_p`` (persistent) from there up, where both were timed.

    Returns:
        dict: alpha, bandwidth, pack_per_byte, ranks, op, points.
    """
    results = data["results"]
    ranks = int(data["meta"]["ranks"])
    n = [r["bytes"] for r in results]
    if op is None and "ar_p" in results[0]["median_ms"]:
        op = "ar (shipped)"
        t = [r["median_ms"]["ar_p" if r["bytes"] >= 8 * 2**20 else "ar"]
             / 1e3 for r in results]
    else:
        op = op or "ar"
        t = [r["median_ms"][op] / 1e3 for r in results]
    alpha, bandwidth = fit_latency_bandwidth(n, t, ranks)
    pack = [r["median_ms"]["pack"] / 1e3 for r in results]
    # the pack is one pass over memory: cost per byte from the largest size
    big = int(np.argmax(n))
    return {"alpha": alpha, "bandwidth": bandwidth,
            "pack_per_byte": pack[big] / n[big], "ranks": ranks, "op": op,
            "points": list(zip(n, t))}


def table(rows):
    """Speedup table: one line per model, network and rule; p in columns."""
    ranks = rows[0]["ranks"]
    w = max([5] + [len(r["model"]) for r in rows])
    head = (f"{'model':<{w}} {'network':<9} {'rule':<17} "
            + " ".join(f"{p:>6}" for p in ranks))
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<{w}} {r['network']:<9} {r['rule']:<17} "
                     + " ".join(f"{s:>6.1f}" for s in r["speedup"]))
    return "\n".join(lines)


def plot(rows, path):
    """Parallel efficiency ``S(p) / p`` against ranks, one panel per model
    and network (a log-log speedup plot hides the differences)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    nets = [n for n in dict.fromkeys(r["network"] for r in rows)
            if n != "measured"]
    fig, axes = plt.subplots(len(models), len(nets), squeeze=False,
                             figsize=(5.5 * len(nets), 3.6 * len(models)))
    for i, model in enumerate(models):
        for j, net in enumerate(nets):
            ax = axes[i][j]
            sel = [r for r in rows if r["model"] == model
                   and r["network"] == net]
            ranks = sel[0]["ranks"]
            for r in sel:
                ax.plot(r["ranks"], [s / p for s, p in zip(r["speedup"],
                                                           r["ranks"])],
                        marker="o", ms=3, label=r["rule"])
            ax.set(xscale="log", ylim=(0, 1.05), xlabel="ranks p",
                   ylabel="efficiency S(p) / p",
                   title=f"{model}, ring allreduce on {net}")
            ax.set_xticks(ranks)
            ax.set_xticklabels([str(p) for p in ranks], fontsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _launch(script, ranks, args, out, timeout):
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [mpiexec, "-n", str(ranks), sys.executable,
           os.path.join(HERE, script), *args, "--json", out]
    env = dict(os.environ, KERAS_BACKEND="torch", TMPI_NUM_THREADS="1",
               OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(
                   filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f)


def _parse_model(text):
    try:
        name, step_ms, mib = text.split(":")
        model = {"name": name, "step_s": float(step_ms) / 1e3,
                 "nbytes": float(mib) * 2**20}
    except ValueError:
        raise ValueError(f"--model {text!r}: use name:step_ms:MiB, e.g. "
                         "vgg:180:1.2") from None
    if model["step_s"] <= 0 or model["nbytes"] <= 0:
        raise ValueError(f"--model {text!r}: step and size must be > 0")
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exchange-json", default=None,
                   help="benchmarks/exchange.py --json output; default: "
                        "measure now on 2 ranks")
    p.add_argument("--exchange-args",
                   default="--sizes 64K,256K,1M,4M,16M,64M --no-wrn "
                           "--no-gloo --budget-s 3",
                   help="arguments of exchange.py when measuring")
    p.add_argument("--compute-json", action="append", default=[],
                   help="benchmarks/keras_overhead.py --json output "
                        "(repeatable); default: measure now on 2 ranks")
    p.add_argument("--compute-args", default="--repeats 3 --steps 4",
                   help="arguments of keras_overhead.py when measuring")
    p.add_argument("--model", action="append", default=[],
                   help="name:step_ms:MiB, a model given by hand "
                        "(repeatable; added to the measured ones)")
    p.add_argument("--no-compute", action="store_true",
                   help="measure no model (use --model/--compute-json only)")
    p.add_argument("--ranks", default=",".join(map(str, DEFAULT_RANKS)))
    p.add_argument("--every", type=int, default=4,
                   help="BSP parameter averaging period k")
    p.add_argument("--tau", type=int, default=4, help="EASGD period")
    p.add_argument("--q", type=float, default=0.1,
                   help="GoSGD push probability")
    p.add_argument("--png", default=None, help="write the plot here")
    p.add_argument("--json", default=None, help="write inputs and rows here")
    args = p.parse_args(argv)
    try:
        manual = [_parse_model(m) for m in args.model]
        ranks = [int(r) for r in args.ranks.split(",") if r]
    except ValueError as e:
        p.error(str(e))
    if not ranks or min(ranks) < 1:
        p.error(f"--ranks={args.ranks}: positive integers")
    if args.no_compute and not (manual or args.compute_json):
        p.error("--no-compute needs --model or --compute-json")
    if args.every < 1 or args.tau < 1 or not 0 < args.q <= 1:
        p.error("--every and --tau must be >= 1 and --q in (0, 1]")

    with tempfile.TemporaryDirectory() as tmp:
        if args.exchange_json:
            with open(args.exchange_json) as f:
                ex_data = json.load(f)
        else:
            ex_data = _launch("exchange.py", 2, args.exchange_args.split(),
                              os.path.join(tmp, "exchange.json"), 1200)
        computes = []
        for path in args.compute_json:
            with open(path) as f:
                computes.append(json.load(f))
        if not args.compute_json and not args.no_compute:
            computes.append(_launch(
                "keras_overhead.py", 2, args.compute_args.split(),
                os.path.join(tmp, "overhead.json"), 1800))
    exchange = exchange_inputs(ex_data)
    models = manual + [{"name": c["model"],
                        "step_s": c["median_step_s"]["local"],
                        "nbytes": float(c["grad_bytes"]),
                        "measured_sync_over_local": c["sync_over_local"]}
                       for c in computes]
    exchange["gamma"] = measure_gamma(max(m["nbytes"] for m in models))
    rows = predict(models, exchange, ranks=ranks, every=args.every,
                   tau=args.tau, q=args.q)

    print(f"exchange ({exchange['op']}, {exchange['ranks']} ranks on this "
          f"host): alpha {exchange['alpha'] * 1e6:.1f} us per ring step, "
          f"B {exchange['bandwidth'] / 1e9:.2f} GB/s; pack "
          f"{exchange['pack_per_byte'] * 1e9:.3f} ns/byte; local sum gamma "
          f"{exchange['gamma'] * 1e9:.3f} ns/byte")
    for name, (bandwidth, link) in NETWORKS.items():
        print(f"network {name}: B {bandwidth / 1e9:.2f} GB/s, alpha "
              f"{(exchange['alpha'] + link) * 1e6:.1f} us (measured + "
              f"{link * 1e6:.0f} us link)")
    for m in models:
        print(f"model {m['name']}: t_c {m['step_s'] * 1e3:.1f} ms per step, "
              f"n {m['nbytes'] / 2**20:.2f} MiB")
    print()
    print(table(rows))
    if args.png:
        plot(rows, args.png)
        print(f"wrote {args.png}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"exchange": exchange, "models": models, "rows": rows,
                       "networks": NETWORKS}, f, indent=1)
    return {"exchange": exchange, "models": models, "rows": rows}


if __name__ == "__main__":
    main()
