"""The exchangers across hosts: flat ``ar``, hierarchical (``hier``,
``hier16``) and MPICH's own ``MPI_Allreduce`` of the same bytes, on emulated
hosts (``tests/hosts.py``: network namespaces joined by a bridge, a token
bucket on each link), against the link's limit.

For each buffer size, and the fused parameter set of a Wide-ResNet-16-4
(``benchmarks/exchange.py``'s shapes), this times side by side in one MPI
job, in a fresh random order every repetition:

* **mpi**: ``comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)`` on one
  preallocated float32 array (MPICH picks its own algorithm, node-aware
  ones included) -- the reference of the ratios;
* **ar**: the ``ar`` exchanger (flat: one Allreduce over every rank) on a
  fused buffer over that same array;
* **hier**: the ``hier`` exchanger as shipped (what ``strategy='auto'``
  picks here) on a buffer from its ``allocate`` (the path the rules take):
  every local rank is a lane, chunks of at most ``--chunk-mb`` (default: the
  exchanger's 4 MiB) dealt to the lanes in turn;
* **hier1**: ``hier`` with one lane (one leader per host does the network
  part for the whole buffer), same chunks;
* **hier_w**: ``hier`` with one whole chunk per lane (``chunk_bytes=None``);
* **hier16**: ``hier16`` (``asa16``, fp16, between hosts), same chunks, its
  buffer refilled (untimed) with gradient-like values before every call;
* **link**: not timed: the time the link's rate allows for a
  reduce-scatter + allgather between ``h`` hosts, ``2 (h-1)/h x bytes /
  rate`` (each host sends and receives that much; no header bytes counted).

Every timed call follows a ``Barrier``; the repetition's time is the
slowest rank's. Medians, and ratios of medians, are printed per link rate.

Launch (root; brings the bed up, runs one MPI job per rate, tears it down)::

    python benchmarks/hosts_exchange.py
    python benchmarks/hosts_exchange.py --rates 1gbit,unlimited \\
        --sizes 1M,4M,16M,64M,128M --json hosts_exchange.json

``--worker`` is the MPI job itself, for a bed brought up by hand::

    python tests/hosts.py up 2 --rate 1gbit
    python tests/hosts.py run -n 2 -ppn 2 -- python \\
        benchmarks/hosts_exchange.py --worker --rate 1gbit
    python tests/hosts.py down
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
sys.path.insert(0, os.path.join(ROOT, "tests"))   # hosts.py, mpirun.py

from exchange import _label, parse_size, wrn_param_shapes  # noqa: E402

__all__ = ["link_limit_s", "main"]

DEFAULT_SIZES = "1M,2M,4M,8M,16M,32M,64M,128M"
OPS = ("mpi", "ar", "hier", "hier1", "hier_w", "hier16")
RATIOS = (("ar/mpi", "ar", "mpi"), ("hier/mpi", "hier", "mpi"),
          ("hier1/mpi", "hier1", "mpi"), ("hierw/mpi", "hier_w", "mpi"),
          ("h16/mpi", "hier16", "mpi"), ("hier/link", "hier", "link"),
          ("hierw/link", "hier_w", "link"), ("ar/link", "ar", "link"),
          ("mpi/link", "mpi", "link"),
          ("h16/hier", "hier16", "hier"), ("hier/ar", "hier", "ar"))


def link_limit_s(nbytes, hosts, rate_bits):
    """Seconds a reduce-scatter + allgather of ``nbytes`` among ``hosts``
    hosts needs at least on links of ``rate_bits`` bit/s each way:
    ``2 (h-1)/h x nbytes / rate`` (``None`` without a rate)."""
    if rate_bits is None:
        return None
    return 2 * (hosts - 1) / hosts * nbytes * 8 / rate_bits


def _rate_bits(rate):
    """``'1gbit'`` -> 1e9; ``'unlimited'`` -> ``None`` (tc's decimal units)."""
    if rate in (None, "unlimited"):
        return None
    text = rate.lower()
    for suffix, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3),
                          ("bit", 1.0)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * scale
    raise ValueError(f"rate={rate!r} must be 'unlimited' or a tc rate such "
                     "as '1gbit' or '100mbit'")


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Time flat ar, the hierarchical exchangers and MPICH's "
        "Allreduce across emulated hosts, against the link's limit.")
    parser.add_argument("--rates", default="unlimited,1gbit",
                        help="link rates, one MPI job each (default: "
                        "unlimited,1gbit)")
    parser.add_argument("--hosts", type=int, default=2,
                        help="emulated hosts (default 2)")
    parser.add_argument("--ppn", type=int, default=2,
                        help="ranks per host (default 2)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"buffer sizes (default {DEFAULT_SIZES})")
    parser.add_argument("--no-wrn", action="store_true",
                        help="skip the Wide-ResNet-16-4 row")
    parser.add_argument("--chunk-mb", type=float, default=None,
                        help="largest chunk of hier, hier1 and hier16 in MiB "
                        "(default: the exchanger's, 4 MiB)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per row (default: adaptive "
                        "within [--min-repeats, 50], about --budget-s)")
    parser.add_argument("--min-repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=8.0,
                        help="target seconds of repetitions per row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds one MPI job may take (default 1800)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write the results as JSON to PATH")
    parser.add_argument("--worker", action="store_true",
                        help="be the MPI job (on a bed that is up)")
    parser.add_argument("--rate", default="unlimited",
                        help="--worker: the link rate, for the limit")
    args = parser.parse_args(argv)
    try:
        args.sizes = [parse_size(s) for s in args.sizes.split(",")
                      if s.strip()]
        for rate in args.rates.split(",") + [args.rate]:
            _rate_bits(rate)
    except ValueError as exc:
        parser.error(str(exc))
    for name in ("hosts", "ppn", "min_repeats", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.chunk_mb is not None and args.chunk_mb * 2**20 < 1024:
        parser.error("--chunk-mb must give chunks of 1 KiB or more")
    return args


# -- the MPI job ---------------------------------------------------------------

class _Row:
    """One row's buffers and timed operations (every rank)."""

    def __init__(self, ctx, label, shapes, chunk_bytes):
        from mpi4py import MPI

        from tmpi_core import (AllreduceExchanger, FlatBuffer,
                               HierarchicalExchanger,
                               HierarchicalHalfExchanger)

        self.ctx, self.label = ctx, label
        comm = ctx.comm
        rng = np.random.default_rng(ctx.rank)
        self.flat = FlatBuffer(shapes)
        self.nbytes = self.flat.nbytes
        chunks = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
        exchangers = (AllreduceExchanger(comm),
                      HierarchicalExchanger(comm, **chunks),
                      HierarchicalExchanger(comm, lanes=1, **chunks),
                      HierarchicalExchanger(comm, chunk_bytes=None),
                      HierarchicalHalfExchanger(comm, **chunks))
        self.exchangers = exchangers
        ar, hier, hier1, hier_w, hier16 = exchangers
        bufs = {name: FlatBuffer(shapes, allocate=ex.allocate)
                for name, ex in (("hier", hier), ("hier1", hier1),
                                 ("hier_w", hier_w), ("hier16", hier16))}
        self.bufs = bufs
        self.values = (1e-3 / ctx.size * rng.standard_normal(
            self.flat.size)).astype(np.float32)
        raw = self.flat.data
        self.ops = {
            "mpi": lambda: comm.Allreduce(MPI.IN_PLACE, raw, op=MPI.SUM),
            "ar": lambda: ar.allreduce_sum(self.flat),
            "hier": lambda: hier.allreduce_sum(bufs["hier"]),
            "hier1": lambda: hier1.allreduce_sum(bufs["hier1"]),
            "hier_w": lambda: hier_w.allreduce_sum(bufs["hier_w"]),
            "hier16": lambda: hier16.allreduce_sum(bufs["hier16"]),
        }
        self.MPI = MPI

    def free(self):
        """Free the exchangers' windows, requests and communicators."""
        self.bufs = None
        for ex in self.exchangers:
            ex.free()

    def check(self):
        """Raise unless every operation sums over ranks (an operation that
        skipped its collective would look fast)."""
        comm, MPI = self.ctx.comm, self.MPI
        want = self.values.copy()
        comm.Allreduce(MPI.IN_PLACE, want, op=MPI.SUM)
        bad = []
        for op in OPS:
            buf = self.bufs.get(op, self.flat)
            np.copyto(buf.data, self.values)
            self.ops[op]()
            tol = 2e-3 if op == "hier16" else 1e-5
            if not np.allclose(buf.data, want, rtol=tol,
                               atol=tol * float(np.abs(want).max())):
                bad.append(op)
            buf.data.fill(0)
        if any(comm.allgather(bad)):
            raise RuntimeError(f"row {self.label}: {bad} did not compute "
                               "the sum over ranks")

    def repetition(self, index):
        order = [OPS[i] for i in
                 np.random.default_rng(index).permutation(len(OPS))]
        seconds = {}
        for op in order:
            if op == "hier16":       # gradient-like values, not zeros
                np.copyto(self.bufs["hier16"].data, self.values)
            self.ctx.comm.Barrier()
            t0 = time.perf_counter()
            self.ops[op]()
            seconds[op] = time.perf_counter() - t0
        times = np.array([seconds[op] for op in OPS])
        self.ctx.comm.Allreduce(self.MPI.IN_PLACE, times, op=self.MPI.MAX)
        return times


def _worker(args):
    from tmpi_core import get_context
    from tmpi_core.exchangers import resolve_strategy
    from tmpi_core.exchangers.hier import host_layout

    ctx = get_context()
    comm = ctx.comm
    layout = host_layout(comm)
    layout.comm.Free()
    auto = resolve_strategy("auto", comm)
    rate_bits = _rate_bits(args.rate)
    rows = [(_label(n), [(n // 4,)]) for n in args.sizes]
    if not args.no_wrn:
        rows.append(("WRN-16-4", [s for _, s in wrn_param_shapes(16, 4)]))
    results = []
    for label, shapes in rows:
        row = _Row(ctx, label, shapes, None if args.chunk_mb is None
                   else int(args.chunk_mb * 2**20))
        row.check()
        warm = [float(row.repetition(i).sum()) for i in range(args.warmup)]
        repeats = args.repeats or int(min(50, max(
            args.min_repeats, args.budget_s // max(statistics.median(warm),
                                                   1e-9))))
        samples = np.array([row.repetition(i) for i in range(repeats)])
        med = {op: statistics.median(samples[:, j].tolist())
               for j, op in enumerate(OPS)}
        limit = link_limit_s(row.nbytes, len(layout.sizes), rate_bits)
        if limit is not None:
            med["link"] = limit
        results.append({
            "label": label, "bytes": row.nbytes, "repeats": repeats,
            "median_ms": {k: v * 1e3 for k, v in med.items()},
            "ratios": {name: med[a] / med[b] for name, a, b in RATIOS
                       if a in med and b in med}})
        if ctx.rank == 0:
            print(f"  {args.rate} {label}: " + ", ".join(
                f"{k} {results[-1]['ratios'][k]:.3f}"
                for k in ("hier/mpi", "ar/mpi", "hier/link")
                if k in results[-1]["ratios"]), flush=True)
        row.free()
    if ctx.rank == 0:
        from mpi4py import MPI

        meta = {"rate": args.rate, "hosts": layout.sizes, "auto": auto,
                "mpi": MPI.Get_library_version().splitlines()[0].strip(),
                "chunk_mb": args.chunk_mb, "loadavg": os.getloadavg()}
        out = {"meta": meta, "results": results}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        else:
            print(_tables([out]))
    return results


# -- the driver: bed up, one job per rate, bed down ---------------------------

def _fmt(v, width=8, digits=3):
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


def _tables(runs):
    lines = []
    for run in runs:
        meta, results = run["meta"], run["results"]
        ops = [op for op in (*OPS, "link")
               if any(op in r["median_ms"] for r in results)]
        lines.append(f"\nlink {meta['rate']}, ranks per host {meta['hosts']}"
                     f" (auto -> {meta['auto']}), {meta['mpi']}; median ms")
        head = f"{'row':>9} {'MiB':>7} {'reps':>4} " + " ".join(
            f"{op:>8}" for op in ops)
        lines += [head, "-" * len(head)]
        for r in results:
            lines.append(f"{r['label']:>9} {r['bytes'] / 2**20:>7.2f} "
                         f"{r['repeats']:>4} " + " ".join(
                             _fmt(r["median_ms"].get(op)) for op in ops))
        names = [n for n, _, _ in RATIOS
                 if any(n in r["ratios"] for r in results)]
        lines.append("ratios of medians")
        head = f"{'row':>9} " + " ".join(f"{n:>10}" for n in names)
        lines += [head, "-" * len(head)]
        for r in results:
            lines.append(f"{r['label']:>9} " + " ".join(
                _fmt(r["ratios"].get(n), 10) for n in names))
    return "\n".join(lines)


def goals(runs):
    """The three goals of the hierarchical exchange, each met or not.

    Returns:
        list of ``(goal, met, worst ratio, where)``; ``met`` is ``None``
        when no run measured it.
    """
    def worst(key, rate_ok, min_bytes):
        found = [(r["ratios"][key], f"{run['meta']['rate']} {r['label']}")
                 for run in runs if rate_ok(run["meta"]["rate"])
                 for r in run["results"]
                 if r["bytes"] >= min_bytes and key in r["ratios"]]
        return max(found) if found else (None, "")

    gbit = lambda rate: rate == "1gbit"              # noqa: E731
    checks = [("hier <= 1.0x MPI_Allreduce from 1 MiB", "hier/mpi",
               lambda rate: True, 2**20, 1.0),
              ("hier <= 1.1x link limit from 16 MiB on 1 Gbit/s",
               "hier/link", gbit, 16 * 2**20, 1.1),
              ("hier16 <= 0.6x hier on 1 Gbit/s from 4 MiB", "h16/hier",
               gbit, 4 * 2**20, 0.6)]
    out = []
    for text, key, rate_ok, min_bytes, bound in checks:
        value, where = worst(key, rate_ok, min_bytes)
        out.append((text, None if value is None else value <= bound, value,
                    where))
    return out


def _drive(args):
    from hosts import HostBed, unavailable_reason
    from mpirun import mpiexec

    reason = unavailable_reason()
    if reason:
        sys.exit(f"hosts_exchange: {reason}")
    runs = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    with HostBed(args.hosts) as bed, tempfile.TemporaryDirectory() as tmp:
        for rate in args.rates.split(","):
            bed.set_rate(None if rate == "unlimited" else rate)
            out = os.path.join(tmp, f"{rate}.json")
            cmd = [mpiexec(), *bed.mpiexec_args(args.ppn), "-n",
                   str(args.hosts * args.ppn), sys.executable,
                   os.path.abspath(__file__), "--worker", "--rate", rate,
                   "--json", out, "--sizes",
                   ",".join(str(s) for s in args.sizes),
                   "--min-repeats", str(args.min_repeats),
                   "--budget-s", str(args.budget_s),
                   "--warmup", str(args.warmup)]
            if args.chunk_mb is not None:
                cmd += ["--chunk-mb", str(args.chunk_mb)]
            if args.repeats:
                cmd += ["--repeats", str(args.repeats)]
            if args.no_wrn:
                cmd.append("--no-wrn")
            before = bed.link_bytes()
            subprocess.run(cmd, env=env, cwd=ROOT, check=True,
                           timeout=args.timeout)
            moved = bed.bytes_since(before)
            with open(out) as f:
                run = json.load(f)
            run["meta"]["link_bytes"] = moved
            runs.append(run)
            print(f"  {rate}: {sum(v['tx'] for v in moved.values()) / 2**30:.2f}"
                  " GiB sent over the links", flush=True)
    print(_tables(runs))
    print("\ngoals")
    for text, met, value, where in goals(runs):
        verdict = {None: "not measured", True: "met", False: "NOT met"}[met]
        detail = "" if value is None else f" (worst {value:.3f}, {where})"
        print(f"  {text}: {verdict}{detail}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv[1:], "runs": runs}, f, indent=1)
        print(f"wrote {args.json}")
    return runs


def main(argv=None):
    """Drive the benchmark (default) or be its MPI job (``--worker``)."""
    args = _parse_args(argv)
    return _worker(args) if args.worker else _drive(args)


if __name__ == "__main__":
    main()
