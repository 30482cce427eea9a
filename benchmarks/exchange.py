"""Cost of the BSP gradient exchange against a raw ``MPI_Allreduce``.

For each buffer size, and for the parameter set of a Wide-ResNet-16-4
(CIFAR-10 shapes), this times four operations side by side in the same run:

* **exchange**: ``BSP(mode='grads').on_gradients(grads)`` on a list of
  float32 tensors of that many bytes in total -- one pass packing them into
  the fused buffer scaled by ``1/p``, then one in-place ``Allreduce``;
* **ar**: the ``ar`` exchanger alone on an already fused buffer;
* **raw**: ``comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)`` on one
  preallocated float32 array of the same bytes;
* **pack**: the exchange's pack pass alone (local, no communication).

Each repetition runs all four in an order rotated every repetition, so slow
drift of a noisy machine hits all alike. Every timed call is preceded by a
``Barrier``; each rank times it with ``time.perf_counter`` and the
repetition's time is the maximum over ranks. Medians are reported, with
ratios of medians and the median of per-repetition exchange/raw ratios.

Launch::

    mpiexec -n 2 python benchmarks/exchange.py
    mpiexec -n 2 python benchmarks/exchange.py --help
    mpiexec -n 2 python benchmarks/exchange.py --sizes 1M,16M --repeats 50 \\
        --json exchange.json

Sizes take binary suffixes: ``64K`` is 64 * 1024 bytes, ``1M`` is 2**20.
"""

import argparse
import json
import platform
import statistics
import sys
import time
import warnings

import numpy as np

from tmpi_core.buffer import FlatBuffer
from tmpi_core.context import get_context
from tmpi_core.exchangers import make_exchanger
from tmpi_core.rules.bsp import BSP

__all__ = ["wrn_param_shapes", "split_sizes", "parse_size", "main"]

_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
DEFAULT_SIZES = "64K,256K,1M,4M,16M,64M"


def wrn_param_shapes(depth=16, width=4, *, input_channels=3, num_classes=10):
    """Trainable parameter shapes of a pre-activation Wide-ResNet.

    Zagoruyko & Komodakis 2016, "Wide Residual Networks": a 3x3 stem
    convolution to 16 channels, three groups of ``n = (depth - 4) / 6`` basic
    blocks with widths ``16k, 32k, 64k`` (``k = width``), a final batch norm
    and a dense classifier. Each block is BN-ReLU-conv3x3-BN-ReLU-conv3x3 with
    a 1x1 convolution on the shortcut where the channel count changes.
    Convolutions carry no bias (they are followed by batch norm); batch norm
    contributes its trainable gamma and beta only (the moving statistics get
    no gradient). Kernels use the Keras layout ``(kh, kw, cin, cout)``.

    The shapes depend only on the channel counts, not on the 32x32 input
    size.

    Args:
        depth: network depth; ``depth - 4`` must be a positive multiple of 6.
        width: widening factor ``k``.
        input_channels: channels of the input image (3 for RGB).
        num_classes: outputs of the classifier.

    Returns:
        list of ``(name, shape)`` pairs in construction order.

    Raises:
        ValueError: for a depth that does not give whole blocks, or a
            non-positive width, channel or class count.

    Example:
        >>> shapes = wrn_param_shapes(16, 4)
        >>> sum(int(np.prod(s)) for _, s in shapes)
        2748890
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(
            f"depth={depth} gives no whole number of blocks; use 6n + 4 "
            "(10, 16, 22, 28, 40, ...)"
        )
    for name, value in (("width", width), ("input_channels", input_channels),
                        ("num_classes", num_classes)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    n = (depth - 4) // 6
    widths = [16, 16 * width, 32 * width, 64 * width]
    shapes = [("stem/conv", (3, 3, input_channels, widths[0]))]
    cin = widths[0]
    for group, cout in enumerate(widths[1:], start=1):
        for block in range(n):
            p = f"group{group}/block{block}"
            shapes += [
                (f"{p}/bn1/gamma", (cin,)), (f"{p}/bn1/beta", (cin,)),
                (f"{p}/conv1", (3, 3, cin, cout)),
                (f"{p}/bn2/gamma", (cout,)), (f"{p}/bn2/beta", (cout,)),
                (f"{p}/conv2", (3, 3, cout, cout)),
            ]
            if cin != cout:
                shapes.append((f"{p}/shortcut", (1, 1, cin, cout)))
            cin = cout
    shapes += [
        ("head/bn/gamma", (cin,)), ("head/bn/beta", (cin,)),
        ("head/dense/kernel", (cin, num_classes)),
        ("head/dense/bias", (num_classes,)),
    ]
    return shapes


def split_sizes(count, parts):
    """Split ``count`` elements into ``parts`` tensors that double in size.

    Mimics a network whose layers grow with depth: tensor ``i`` holds about
    ``2**i / (2**parts - 1)`` of the elements (the last about half). Sizes
    sum to exactly ``count``; none is empty when ``count >= 2**parts``.

    Args:
        count: total number of elements.
        parts: number of tensors (``>= 1``).

    Returns:
        list of ``parts`` non-negative ints summing to ``count``.
    """
    total_weight = 2**parts - 1
    sizes = [count * 2**i // total_weight for i in range(parts)]
    sizes[-1] += count - sum(sizes)
    return sizes


def parse_size(text):
    """Parse a byte count such as ``'64K'``, ``'1M'`` or ``'65536'``.

    Args:
        text: a whole number with an optional binary suffix K, M or G
            (and an optional trailing ``B``/``iB``).

    Returns:
        int: the number of bytes.

    Raises:
        ValueError: for anything else, or a size not a multiple of 4 bytes.
    """
    t = text.strip().upper()
    for tail in ("IB", "B"):
        if t.endswith(tail) and len(t) > len(tail):
            t = t[: -len(tail)]
            break
    suffix = t[-1] if t and t[-1] in _SUFFIXES else ""
    number = t[: len(t) - len(suffix)]
    if not number.isdigit() or int(number) == 0:
        raise ValueError(
            f"size {text!r} is not a positive whole number with an optional "
            "K/M/G suffix (e.g. 64K, 1M)"
        )
    nbytes = int(number) * _SUFFIXES[suffix]
    if nbytes % 4:
        raise ValueError(
            f"size {text!r} is {nbytes} bytes, not a whole number of float32 "
            "values; use a multiple of 4"
        )
    return nbytes


def _label(nbytes):
    for suffix in ("G", "M", "K"):
        unit = _SUFFIXES[suffix]
        if nbytes >= unit and nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.1f}M"
    return f"{nbytes}B"


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Time the BSP gradient exchange (pack + Allreduce + "
        "scale) against a raw in-place Allreduce of the same bytes.",
        epilog="Launch under MPI: mpiexec -n 2 python benchmarks/exchange.py",
    )
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES,
        help="comma-separated buffer sizes in bytes, binary suffixes K/M/G "
        f"(default: {DEFAULT_SIZES})")
    parser.add_argument(
        "--max-mb", type=float, default=64.0,
        help="skip sizes above this many MiB (default: 64)")
    parser.add_argument(
        "--tensors", type=int, default=8,
        help="tensors each size is split into for the exchange (default: 8)")
    parser.add_argument(
        "--repeats", type=int, default=None,
        help="timed repetitions per row; default: adaptive, about "
        "--budget-s seconds per row within [--min-repeats, --max-repeats]")
    parser.add_argument(
        "--min-repeats", type=int, default=5,
        help="fewest adaptive repetitions (default: 5)")
    parser.add_argument(
        "--max-repeats", type=int, default=1000,
        help="most adaptive repetitions (default: 1000)")
    parser.add_argument(
        "--budget-s", type=float, default=10.0,
        help="target seconds of interleaved exchange/raw pairs per row "
        "(default: 10)")
    parser.add_argument(
        "--warmup", type=int, default=3,
        help="untimed repetitions before timing, >= 1 (default: 3)")
    parser.add_argument(
        "--no-wrn", action="store_true",
        help="skip the Wide-ResNet-16-4 row")
    parser.add_argument(
        "--json", metavar="PATH", default=None,
        help="also write the results as JSON to PATH (rank 0)")
    args = parser.parse_args(argv)
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError as exc:
        parser.error(f"--sizes: {exc}")
    args.sizes = [s for s in sizes if s <= args.max_mb * 2**20]
    for name in ("tensors", "min_repeats", "max_repeats", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} "
                         "must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    if args.min_repeats > args.max_repeats:
        parser.error(f"--min-repeats={args.min_repeats} is above "
                     f"--max-repeats={args.max_repeats}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s={args.budget_s} must be > 0")
    if not args.sizes and args.no_wrn:
        parser.error(f"no size is <= --max-mb={args.max_mb} and --no-wrn was "
                     "given: nothing to time")
    return args


OPS = ("exchange", "ar", "raw", "pack")


class _Row:
    """The buffers and timed operations of one benchmark row."""

    def __init__(self, ctx, label, shapes):
        from mpi4py import MPI

        self.ctx = ctx
        self.label = label
        self.shapes = [tuple(s) for s in shapes]
        rng = np.random.default_rng(1234 + ctx.rank)
        self.grads = [rng.standard_normal(s, dtype=np.float32)
                      for s in self.shapes]
        self.rule = BSP(mode="grads", comm=ctx.comm)
        self.rule.start([np.zeros(s, np.float32) for s in self.shapes])
        self.exchanger = make_exchanger("ar", ctx.comm)
        # Zeros: the sum's cost does not depend on the values for normal
        # floats, and zeros never grow into inf over many in-place sums.
        self.fused = FlatBuffer(self.shapes)
        self.raw = np.zeros(self.fused.size, dtype=np.float32)
        self.local = FlatBuffer(self.shapes)
        self.scale = np.float32(1.0 / ctx.size)
        self._in_place = MPI.IN_PLACE
        self._sum = MPI.SUM
        self._max = MPI.MAX
        self._land = MPI.LAND
        self.nbytes = self.raw.nbytes
        self._ops = {
            "exchange": lambda: self.rule.on_gradients(self.grads),
            "ar": lambda: self.exchanger.allreduce_sum(self.fused),
            "raw": lambda: ctx.comm.Allreduce(self._in_place, self.raw,
                                              op=self._sum),
            "pack": lambda: self.local.pack(self.grads, scale=self.scale),
        }

    def _time(self, op):
        self.ctx.comm.Barrier()
        t0 = time.perf_counter()
        self._ops[op]()
        return time.perf_counter() - t0

    def repetition(self, index):
        """One repetition of every op, in an order rotated by ``index`` so
        slow drift hits all alike: max-over-ranks seconds in :data:`OPS`
        order."""
        k = index % len(OPS)
        order = OPS[k:] + OPS[:k]
        seconds = dict((op, self._time(op)) for op in order)
        times = np.array([seconds[op] for op in OPS], dtype=np.float64)
        self.ctx.comm.Allreduce(self._in_place, times, op=self._max)
        return times

    def check(self):
        """Raise unless the exchange returned the mean over ranks.

        Guards the timings: an exchange that skipped its collective would
        look fast. The reference is one Allreduce of a separate buffer.
        """
        out = self.rule.on_gradients(self.grads)
        ref = FlatBuffer(self.shapes)
        ref.pack(self.grads)
        self.ctx.comm.Allreduce(self._in_place, ref.data, op=self._sum)
        ref.data /= self.ctx.size
        ok = all(np.allclose(a, b, rtol=1e-5, atol=1e-6)
                 for a, b in zip(out, ref.views))
        if not self.ctx.comm.allreduce(ok, op=self._land):
            raise RuntimeError(
                f"row {self.label}: on_gradients did not return the mean of "
                "the gradients over ranks; the timings would be meaningless")

    def run(self, args):
        """Warm up, pick the repetition count, time; return a result dict."""
        self.check()
        warm = [float(self.repetition(i).sum()) for i in range(args.warmup)]
        if args.repeats is not None:
            repeats = args.repeats
        else:
            # Every rank holds the same max-over-ranks times, so every rank
            # picks the same count.
            per_rep = max(statistics.median(warm), 1e-9)
            repeats = int(min(args.max_repeats,
                              max(args.min_repeats, args.budget_s // per_rep)))
        samples = np.array([self.repetition(i) for i in range(repeats)])
        return _summarise(self, samples)


def _summarise(row, samples):
    cols = {op: samples[:, j] for j, op in enumerate(OPS)}
    med = {op: statistics.median(v.tolist()) for op, v in cols.items()}
    return {
        "label": row.label,
        "bytes": row.nbytes,
        "tensors": len(row.shapes),
        "repeats": int(samples.shape[0]),
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "exchange_over_raw": med["exchange"] / med["raw"],
        "ar_over_raw": med["ar"] / med["raw"],
        "median_of_ratios": statistics.median(
            (cols["exchange"] / cols["raw"]).tolist()),
        "samples_ms": {op: (v * 1e3).tolist() for op, v in cols.items()},
    }


def _table(results):
    head = (f"{'row':>10} {'MiB':>7} {'tens':>4} {'reps':>4} "
            f"{'exch ms':>9} {'ar ms':>9} {'raw ms':>9} {'pack ms':>8} "
            f"{'exch/raw':>8} {'med r':>6} {'ar/raw':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        m = r["median_ms"]
        lines.append(
            f"{r['label']:>10} {r['bytes'] / 2**20:>7.3f} {r['tensors']:>4} "
            f"{r['repeats']:>4} {m['exchange']:>9.3f} {m['ar']:>9.3f} "
            f"{m['raw']:>9.3f} {m['pack']:>8.3f} "
            f"{r['exchange_over_raw']:>8.3f} {r['median_of_ratios']:>6.3f} "
            f"{r['ar_over_raw']:>6.3f}")
    return "\n".join(lines)


def main(argv=None):
    """Run the benchmark; print the table on rank 0.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        list of result dicts (every rank holds the same numbers).
    """
    args = _parse_args(argv)
    ctx = get_context()
    from mpi4py import MPI

    if ctx.size == 1 and ctx.rank == 0:
        warnings.warn(
            "running on 1 rank: the exchanger skips the collective there, so "
            "the ratio means little; launch with mpiexec -n 2 or more",
            stacklevel=2)
    rows = [(_label(n), [(c,) for c in split_sizes(n // 4, args.tensors)])
            for n in args.sizes]
    if not args.no_wrn:
        wrn = wrn_param_shapes(16, 4, input_channels=3, num_classes=10)
        count = sum(int(np.prod(s)) for _, s in wrn)
        if ctx.rank == 0:
            print(f"WRN-16-4 (32x32x3, 10 classes): {len(wrn)} tensors, "
                  f"{count:,} parameters, {count * 4 / 2**20:.2f} MiB fp32")
        rows.append(("WRN-16-4", [s for _, s in wrn]))
    if ctx.rank == 0:
        lib = MPI.Get_library_version().splitlines()[0].strip()
        print(f"{ctx.size} ranks ({ctx.local_size} on this host), {lib}, "
              f"mpi4py {__import__('mpi4py').__version__}, numpy "
              f"{np.__version__}; medians of max-over-ranks times", flush=True)

    results = []
    for label, shapes in rows:
        row = _Row(ctx, label, shapes)
        results.append(row.run(args))
        del row
        if ctx.rank == 0:
            r = results[-1]
            print(f"  {label}: exchange/raw {r['exchange_over_raw']:.3f} "
                  f"({r['repeats']} reps)", flush=True)

    if ctx.rank == 0:
        print()
        print(_table(results))
        print("\nexch = BSP gradient exchange (pack x 1/p + Allreduce), "
              "ar = the ar exchanger on an\nalready fused buffer, raw = "
              "comm.Allreduce of the same bytes, pack = the pack alone;\n"
              "exch/raw and ar/raw are ratios of medians, med r the median "
              "of per-repetition exch/raw.")
        if args.json:
            meta = {
                "ranks": ctx.size,
                "ranks_on_host": ctx.local_size,
                "mpi_library": MPI.Get_library_version().splitlines()[0],
                "mpi4py": __import__("mpi4py").__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
                "argv": sys.argv[1:] if argv is None else list(argv),
                "warmup": args.warmup,
            }
            with open(args.json, "w") as fh:
                json.dump({"meta": meta, "results": results}, fh, indent=1)
            print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
