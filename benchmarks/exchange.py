"""The BSP gradient exchange, its parts and its alternatives, against a raw
``MPI_Allreduce`` of the same bytes.

For each buffer size, and for the parameter set of a Wide-ResNet-16-4
(CIFAR-10 shapes), this times side by side in the same run:

* **raw**: ``comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)`` on one
  preallocated float32 array -- the reference of every ratio;
* **ar**: the ``ar`` exchanger with plain ``MPI_Allreduce``
  (``persistent=False``) on a fused buffer over that same array;
* **ar_p**: the ``ar`` exchanger with a persistent request
  (``persistent=True``: ``MPI_Allreduce_init`` made once, then
  ``Start``/``Wait``) on that same buffer; absent where the MPI lacks
  persistent collectives. The shipped ``ar`` (``persistent=None``) is
  ``ar`` below 8 MiB and ``ar_p`` from 8 MiB up;
* **exch**: the whole BSP exchange with ``strategy='ar'``,
  ``BSP(mode='grads', strategy='ar').on_gradients(grads)``
  on a list of float32 tensors of that many bytes in total: one pass
  packing them into the fused buffer scaled by ``1/p``, then the shipped
  ``ar`` (plain below 8 MiB, persistent from 8 MiB up);
* **x_shm**: the same exchange with ``strategy='shm'`` (what the default
  ``strategy='auto'`` picks when every rank is on one host): the tensors packed
  (scaled by ``1/p``) straight into this rank's segment of an MPI
  shared-memory window, then summed in place there (every rank on one
  host; absent otherwise);
* **naive**: what a user without tmpi writes for a list of gradient arrays:
  ``np.concatenate`` of the raveled arrays, an in-place ``Allreduce``,
  ``/= p`` and ``np.split`` back into shaped arrays;
* **asa16**: the ``asa16`` exchanger (fp16 on the wire) on its own fused
  buffer, refilled before every call (untimed) with gradient-like values
  (normal, standard deviation ``--asa16-scale``, default 1e-3): numpy's
  float16 casts, which asa16 makes four of, take far longer on small
  values (fp16 subnormals) than on zeros, so zeros would flatter it;
* **gloo**: ``torch.distributed.all_reduce`` (gloo backend, what a PyTorch
  user picks on CPUs) of a float32 CPU tensor of the same bytes, one torch
  thread per rank; absent without torch or with ``--no-gloo``;
* **pack**: the exchange's pack pass alone (local, no communication).

Each repetition runs all of them in a fresh random order (the same on every
rank), so slow drift of a noisy machine, and which operation ran just before
(what it left in the caches), hit all alike; raw, ar and ar_p work on the
same array. Every timed call is preceded
by a ``Barrier``; each rank times it with ``time.perf_counter`` and the
repetition's time is the maximum over ranks. Medians are reported, and
ratios of medians: each operation over raw, ``asa16`` over ``ar``, ``ar``
over gloo and the exchange over the naive code.

Launch::

    mpiexec -n 2 python benchmarks/exchange.py
    mpiexec -n 2 python benchmarks/exchange.py --help
    mpiexec -n 2 python benchmarks/exchange.py --sizes 1M,16M --repeats 50 \\
        --json exchange.json

Sizes take binary suffixes: ``64K`` is 64 * 1024 bytes, ``1M`` is 2**20.
The gloo group meets at rank 0's host (``127.0.0.1`` when every rank shares
one host; ``MASTER_ADDR`` overrides) on a free port rank 0 picks.
"""

import argparse
import gc
import json
import os
import platform
import socket
import statistics
import sys
import time
import warnings

import numpy as np

from tmpi_core.buffer import FlatBuffer
from tmpi_core.context import get_context
from tmpi_core.exchangers import make_exchanger
from tmpi_core.exchangers.ar import AllreduceExchanger, has_persistent_allreduce
from tmpi_core.rules.bsp import BSP

__all__ = ["wrn_param_shapes", "split_sizes", "parse_size", "naive_average",
           "start_gloo", "main"]

_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
DEFAULT_SIZES = "64K,256K,1M,4M,16M,32M,64M,128M"


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
        description="Time the BSP gradient exchange, the ar (plain and "
        "persistent) and asa16 exchangers, a naive concatenate+Allreduce and "
        "torch.distributed gloo against a raw in-place Allreduce of the same "
        "bytes.",
        epilog="Launch under MPI: mpiexec -n 2 python benchmarks/exchange.py",
    )
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES,
        help="comma-separated buffer sizes in bytes, binary suffixes K/M/G "
        f"(default: {DEFAULT_SIZES})")
    parser.add_argument(
        "--max-mb", type=float, default=128.0,
        help="skip sizes above this many MiB (default: 128)")
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
        help="target seconds of repetitions (all operations) per row "
        "(default: 10)")
    parser.add_argument(
        "--warmup", type=int, default=3,
        help="untimed repetitions before timing, >= 1 (default: 3)")
    parser.add_argument(
        "--no-wrn", action="store_true",
        help="skip the Wide-ResNet-16-4 row")
    parser.add_argument(
        "--asa16-scale", type=float, default=1e-3,
        help="standard deviation of the values asa16 exchanges (default "
        "1e-3, gradient-like; 0 gives zeros)")
    parser.add_argument(
        "--no-gloo", action="store_true",
        help="skip torch.distributed gloo (default: timed when torch imports)")
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


# Every operation the benchmark knows, in table order; a run times those
# available (ar_p needs MPI-4 persistent collectives, gloo needs torch).
ALL_OPS = ("raw", "ar", "ar_p", "exch", "x_shm", "naive", "asa16", "gloo",
           "pack")

# (column, numerator, denominator) of the ratio table.
RATIOS = (
    ("ar/raw", "ar", "raw"), ("ar_p/raw", "ar_p", "raw"),
    ("exch/raw", "exch", "raw"), ("naive/raw", "naive", "raw"),
    ("a16/raw", "asa16", "raw"), ("gloo/raw", "gloo", "raw"),
    ("a16/ar", "asa16", "ar"), ("a16/ar_p", "asa16", "ar_p"),
    ("ar/gloo", "ar", "gloo"), ("ar_p/gloo", "ar_p", "gloo"),
    ("exch/naive", "exch", "naive"),
    ("xshm/raw", "x_shm", "raw"), ("xshm/exch", "x_shm", "exch"),
)


def naive_average(comm, grads, MPI):
    """What one writes without tmpi: concatenate, Allreduce, divide, split.

    Args:
        comm: the communicator.
        grads: float32 arrays.
        MPI: the ``mpi4py.MPI`` module.

    Returns:
        list of arrays of the gradients' shapes holding the mean over ranks.
    """
    flat = np.concatenate([g.ravel() for g in grads])
    comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
    flat /= comm.Get_size()
    cuts = np.cumsum([g.size for g in grads])[:-1]
    return [part.reshape(g.shape) for part, g in zip(np.split(flat, cuts),
                                                     grads)]


def start_gloo(ctx):
    """Join a torch.distributed gloo group of the MPI ranks.

    Rank 0 picks a free TCP port on its host and broadcasts it with mpi4py;
    every rank then calls ``init_process_group('gloo', rank, world_size)``.
    One torch thread per rank.

    Returns:
        the ``torch.distributed`` module, or ``None`` when torch is missing.
    """
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return None
    torch.set_num_threads(1)
    addr = os.environ.get("MASTER_ADDR")
    if addr is None:
        addr = ("127.0.0.1" if ctx.local_size == ctx.size
                else ctx.comm.bcast(socket.gethostname(), root=0))
    port = None
    if ctx.rank == 0:
        with socket.socket() as s:
            s.bind((addr, 0))
            port = s.getsockname()[1]
    port = ctx.comm.bcast(port, root=0)
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)
    import datetime

    dist.init_process_group("gloo", rank=ctx.rank, world_size=ctx.size,
                            timeout=datetime.timedelta(seconds=120))
    return dist


class _Row:
    """The buffers and timed operations of one benchmark row."""

    def __init__(self, ctx, label, shapes, ops, dist=None, asa16_scale=1e-3):
        from mpi4py import MPI

        self.ctx = ctx
        self.label = label
        self.ops = ops
        self.shapes = [tuple(s) for s in shapes]
        rng = np.random.default_rng(1234 + ctx.rank)
        self.grads = [rng.standard_normal(s, dtype=np.float32)
                      for s in self.shapes]
        self.rule = BSP(mode="grads", strategy="ar", comm=ctx.comm)
        self.plain = AllreduceExchanger(ctx.comm, persistent=False)
        self.half = make_exchanger("asa16", ctx.comm)
        # Zeros: the sum's cost does not depend on the values for normal
        # floats, and zeros never grow into inf over many in-place sums.
        # raw, ar and ar_p work on the same array: they differ only in the
        # call, and the random order makes each as likely as the others to
        # find it in cache. (On separate arrays, the same Allreduce differs
        # by up to 20 % from one array to another, run to run.)
        self.fused = FlatBuffer(self.shapes)
        self.raw = self.fused.data
        # asa16's buffer gets the same gradient-like values before each call.
        self.half_buf = FlatBuffer(self.shapes)
        self.half_values = (asa16_scale * rng.standard_normal(
            self.fused.size)).astype(np.float32)
        self._setup = {"asa16": lambda: np.copyto(self.half_buf.data,
                                                  self.half_values)}
        self.local = FlatBuffer(self.shapes)
        self.scale = np.float32(1.0 / ctx.size)
        self.MPI = MPI
        self._in_place = MPI.IN_PLACE
        self._sum = MPI.SUM
        self.nbytes = self.raw.nbytes
        comm = ctx.comm
        self._ops = {
            "raw": lambda: comm.Allreduce(self._in_place, self.raw,
                                          op=self._sum),
            "ar": lambda: self.plain.allreduce_sum(self.fused),
            "exch": lambda: self.rule.on_gradients(self.grads),
            "naive": lambda: naive_average(comm, self.grads, MPI),
            "asa16": lambda: self.half.allreduce_sum(self.half_buf),
            "pack": lambda: self.local.pack(self.grads, scale=self.scale),
        }
        if "x_shm" in ops:
            self.rule_shm = BSP(mode="grads", strategy="shm", comm=ctx.comm)
            self._ops["x_shm"] = lambda: self.rule_shm.on_gradients(
                self.grads)
        if "ar_p" in ops:
            self.persistent = AllreduceExchanger(ctx.comm, persistent=True)
            self._ops["ar_p"] = lambda: self.persistent.allreduce_sum(
                self.fused)
        if "gloo" in ops:
            import torch

            self.dist = dist
            self.tensor = torch.zeros(self.fused.size, dtype=torch.float32)
            self._ops["gloo"] = lambda: dist.all_reduce(self.tensor)

    def _time(self, op):
        setup = self._setup.get(op)
        if setup is not None:
            setup()
        self.ctx.comm.Barrier()
        t0 = time.perf_counter()
        self._ops[op]()
        return time.perf_counter() - t0

    def repetition(self, index):
        """One repetition of every op, in an order shuffled by ``index`` (the
        same on every rank), so slow drift and what ran just before hit all
        alike: max-over-ranks seconds in ``self.ops`` order."""
        order = [self.ops[i] for i in
                 np.random.default_rng(index).permutation(len(self.ops))]
        seconds = dict((op, self._time(op)) for op in order)
        times = np.array([seconds[op] for op in self.ops], dtype=np.float64)
        self.ctx.comm.Allreduce(self._in_place, times, op=self.MPI.MAX)
        return times

    def check(self):
        """Raise unless every operation computes what it claims.

        Guards the timings: an operation that skipped its collective would
        look fast. The exchange and the naive code must return the mean
        over ranks (fp32), ``ar``/``ar_p`` and gloo the sum, ``asa16`` the
        sum to fp16 accuracy.
        """
        comm, p = self.ctx.comm, self.ctx.size
        ref = FlatBuffer(self.shapes)
        ref.pack(self.grads)
        comm.Allreduce(self._in_place, ref.data, op=self._sum)
        mean = ref.data / p
        bad = []

        def close(name, got, want, rtol=1e-5, atol=1e-6):
            if not np.allclose(got, want, rtol=rtol, atol=atol):
                bad.append(name)

        out = self.rule.on_gradients(self.grads)
        close("exch", np.concatenate([a.ravel() for a in out]), mean)
        if "x_shm" in self.ops:
            out = self.rule_shm.on_gradients(self.grads)
            close("x_shm", np.concatenate([a.ravel() for a in out]), mean)
        out = naive_average(comm, self.grads, self.MPI)
        close("naive", np.concatenate([a.ravel() for a in out]), mean)
        exchangers = [("ar", self.plain), ("asa16", self.half)]
        if "ar_p" in self.ops:
            exchangers.append(("ar_p", self.persistent))
        for name, ex in exchangers:
            buf = self.fused
            buf.pack(self.grads)
            ex.allreduce_sum(buf)
            if name == "asa16":
                # fp16: about 3 significant digits of each term and the sum
                close(name, buf.data, ref.data, rtol=2e-3,
                      atol=2e-3 * p * float(np.abs(ref.data).max()))
            else:
                close(name, buf.data, ref.data)
            buf.data.fill(0)
        if "gloo" in self.ops:
            import torch

            self.fused.pack(self.grads)
            self.tensor.copy_(torch.from_numpy(self.fused.data))
            self.dist.all_reduce(self.tensor)
            close("gloo", self.tensor.numpy(), ref.data)
            self.tensor.zero_()
            self.fused.data.fill(0)
        everyone = comm.allgather(bad)
        if any(everyone):
            raise RuntimeError(
                f"row {self.label}: {sorted(set(sum(everyone, [])))} did not "
                "compute the sum/mean over ranks; the timings would be "
                "meaningless")

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
    cols = {op: samples[:, j] for j, op in enumerate(row.ops)}
    med = {op: statistics.median(v.tolist()) for op, v in cols.items()}
    ratios = {name: med[a] / med[b] for name, a, b in RATIOS
              if a in med and b in med}
    return {
        "label": row.label,
        "bytes": row.nbytes,
        "tensors": len(row.shapes),
        "repeats": int(samples.shape[0]),
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "ratios": ratios,
        # the median of per-repetition ratios: robust to a slow repetition
        "median_of_ratios": {
            name: statistics.median((cols[a] / cols[b]).tolist())
            for name, a, b in RATIOS if a in cols and b in cols},
        "samples_ms": {op: (v * 1e3).tolist() for op, v in cols.items()},
    }


def _fmt(value, width, digits):
    return f"{value:>{width}.{digits}f}" if value is not None else \
        f"{'-':>{width}}"


def time_table(results):
    """Medians (ms) of every operation, one row per size."""
    ops = [op for op in ALL_OPS if any(op in r["median_ms"] for r in results)]
    head = (f"{'row':>9} {'MiB':>8} {'tens':>4} {'reps':>4} "
            + " ".join(f"{op:>8}" for op in ops))
    lines = [head, "-" * len(head)]
    for r in results:
        m = r["median_ms"]
        lines.append(
            f"{r['label']:>9} {r['bytes'] / 2**20:>8.3f} {r['tensors']:>4} "
            f"{r['repeats']:>4} "
            + " ".join(_fmt(m.get(op), 8, 3) for op in ops))
    return "\n".join(lines)


def ratio_table(results):
    """Ratios of medians, one row per size."""
    names = [name for name, _, _ in RATIOS
             if any(name in r["ratios"] for r in results)]
    width = max(len(n) for n in names)
    head = f"{'row':>9} " + " ".join(f"{n:>{width}}" for n in names)
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['label']:>9} " + " ".join(
            _fmt(r["ratios"].get(n), width, 3) for n in names))
    return "\n".join(lines)


LEGEND = """\
raw = comm.Allreduce(IN_PLACE) of one preallocated array; ar = the ar
exchanger with plain Allreduce (persistent=False) on that array; ar_p = the ar
exchanger with one persistent MPI_Allreduce_init request (persistent=True);
exch = the whole BSP gradient exchange with strategy='ar' (pack x 1/p into
the fused buffer + ar: plain below 8 MiB, ar_p from 8 MiB up); x_shm = the
same exchange with strategy='shm' (MPI shared memory, one host: what the
default strategy='auto' picks there); naive =
np.concatenate + Allreduce + /p + np.split; asa16 = fp16 on the wire; gloo =
torch.distributed.all_reduce (gloo) of a tensor of the same bytes; pack = the
pack pass alone. Times: medians of the slowest rank's time; ratios: of
medians."""


def main(argv=None):
    """Run the benchmark; print the tables on rank 0.

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
            "running on 1 rank: the exchangers skip the collective there, so "
            "the ratios mean little; launch with mpiexec -n 2 or more",
            stacklevel=2)
    skip = set()
    if not has_persistent_allreduce():
        skip.add("ar_p")
    if ctx.local_size != ctx.size or not all(
            ctx.comm.allgather(ctx.local_size == ctx.size)):
        skip.add("x_shm")                # shared memory needs one host
    dist = None if args.no_gloo else start_gloo(ctx)
    if not all(ctx.comm.allgather(dist is not None)):
        skip.add("gloo")
        if not args.no_gloo and ctx.rank == 0:
            warnings.warn("torch is not installed on every rank: no gloo "
                          "column", stacklevel=2)
    ops = tuple(op for op in ALL_OPS if op not in skip)

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
        torch_version = ""
        if "gloo" in ops:
            torch_version = f", torch {__import__('torch').__version__}"
        print(f"{ctx.size} ranks ({ctx.local_size} on this host), {lib}, "
              f"mpi4py {__import__('mpi4py').__version__}, numpy "
              f"{np.__version__}{torch_version}; medians of max-over-ranks "
              "times", flush=True)

    results = []
    for label, shapes in rows:
        row = _Row(ctx, label, shapes, ops, dist, args.asa16_scale)
        results.append(row.run(args))
        if "x_shm" in ops:
            row.rule_shm._exchanger.free()      # its shared windows
        del row         # its buffers' persistent requests are freed with them
        gc.collect()
        if ctx.rank == 0:
            r = results[-1]["ratios"]
            print(f"  {label}: " + ", ".join(
                f"{k} {r[k]:.3f}" for k in ("ar/raw", "ar_p/raw", "exch/raw")
                if k in r) + f" ({results[-1]['repeats']} reps)", flush=True)
    if dist is not None:
        dist.destroy_process_group()

    if ctx.rank == 0:
        print("\nmedian ms")
        print(time_table(results))
        print("\nratios of medians")
        print(ratio_table(results))
        print()
        print(LEGEND)
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
                "ops": list(ops),
                "loadavg": os.getloadavg(),
            }
            with open(args.json, "w") as fh:
                json.dump({"meta": meta, "results": results}, fh, indent=1)
            print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
