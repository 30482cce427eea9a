"""What asa16's float16 casts cost: numpy's cast against a branch-free one.

    python benchmarks/fp16_cast.py
    python benchmarks/fp16_cast.py --mib 16 --scales 1,1e-3,1e-5 --repeats 7

The ``asa16`` exchanger casts float32 to float16 and back with numpy
(``np.copyto(..., casting='same_kind')``), four times per exchange. numpy's
float16 conversion is scalar code with a branch per element, and on small
values -- those that become fp16 subnormals, such as gradients of order
1e-5 averaged over ranks -- it is much slower still. This times, for
normal values of several standard deviations, one float32 -> float16 pass
of each of:

* **numpy**: ``np.copyto(half, x, casting='same_kind')``;
* **branch-free**: the same rounding (IEEE round to nearest even, with
  subnormals, overflow to inf and NaN) computed with float32 and uint32
  ufuncs on cache-sized chunks (Maratyszcza's FP16 method: scale to push
  the rounding point to bit 13, add an exponent-dependent bias, take the
  bits), its scratch allocated once;
* **copy**: a float32 ``np.copyto`` of the same elements, the floor of any
  pass over the data;

and checks that the branch-free result equals numpy's bit for bit, on the
timed data and on a million float32 bit patterns spread over the whole
range (zeros, subnormals, infinities and NaNs included). Single process;
medians of ``--repeats``.
"""

import argparse
import statistics
import time

import numpy as np

from tmpi_core.exchangers._half import HalfCaster

__all__ = ["HalfCaster", "main"]


def _median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _same_bits(a, b):
    """Bit-equal float16 arrays, any NaN matching any NaN."""
    nan = np.isnan(a)
    return bool(np.array_equal(np.isnan(b), nan) and np.array_equal(
        a.view(np.uint16)[~nan], b.view(np.uint16)[~nan]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=float, default=16.0,
                   help="float32 MiB per pass (default 16)")
    p.add_argument("--scales", default="1,1e-3,1e-5,0",
                   help="standard deviations of the values (0: zeros)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    n = int(args.mib * 2**20) // 4
    caster = HalfCaster()
    rng = np.random.default_rng(0)
    half_np = np.empty(n, np.float16)
    half_bf = np.empty(n, np.float16)
    copy = np.empty(n, np.float32)
    rows = []
    with np.errstate(all="ignore"):
        patterns = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(
            np.uint32).view(np.float32)
        ok_patterns = _same_bits(patterns.astype(np.float16),
                                 _cast(caster, patterns))
        print(f"{n:,} float32 values ({args.mib:g} MiB) per pass; medians of "
              f"{args.repeats}; branch-free == numpy on {patterns.size:,} bit "
              f"patterns: {ok_patterns}")
        head = (f"{'std':>7} {'numpy ms':>9} {'branch-free ms':>15} "
                f"{'copy ms':>8} {'numpy/bf':>9} {'bit-equal':>9}")
        print(head)
        print("-" * len(head))
        for scale in [float(s) for s in args.scales.split(",") if s]:
            x = (scale * rng.standard_normal(n)).astype(np.float32)
            t_np = _median_ms(lambda: np.copyto(half_np, x,
                                                casting="same_kind"),
                              args.repeats)
            t_bf = _median_ms(lambda: caster(x, half_bf), args.repeats)
            t_cp = _median_ms(lambda: np.copyto(copy, x), args.repeats)
            same = _same_bits(half_np, half_bf)
            rows.append({"std": scale, "numpy_ms": t_np, "branch_free_ms": t_bf,
                         "copy_ms": t_cp, "bit_equal": same})
            print(f"{scale:>7g} {t_np:>9.2f} {t_bf:>15.2f} {t_cp:>8.2f} "
                  f"{t_np / t_bf:>9.2f} {str(same):>9}")
    return rows


def _cast(caster, x):
    out = np.empty(x.size, np.float16)
    caster(x, out)
    return out


if __name__ == "__main__":
    main()
