"""float32 -> float16 without numpy's per-element branches (for ``asa16``).

numpy's float16 cast is scalar code with a branch per element and is much
slower on values that become fp16 subnormals (gradients of order 1e-5);
``benchmarks/fp16_cast.py`` measures both. This one computes the same IEEE
rounding (to nearest even, with subnormals, overflow to inf and NaN) with
float32 and uint32 ufuncs on cache-sized chunks, bit for bit equal to
numpy's.
"""

import numpy as np

__all__ = ["HalfCaster", "HalfCasts", "CAST_BACKENDS"]

CAST_BACKENDS = ("auto", "torch", "numpy")


class HalfCaster:
    """float32 -> float16, round to nearest even, without per-element branches.

    Bit-exact with numpy's cast. Works through ``chunk`` elements at a time
    with preallocated scratch, so it allocates nothing per call.

    Args:
        chunk: elements per pass (default 16384: 64 KiB of float32, which
            stays in a core's L2 cache with the scratch).
    """

    def __init__(self, chunk=1 << 14):
        self.chunk = chunk
        self._f = np.empty(chunk, np.float32)
        self._twice = np.empty(chunk, np.uint32)
        self._bias = np.empty(chunk, np.uint32)
        self._out = np.empty(chunk, np.uint32)
        self._nan = np.empty(chunk, np.bool_)

    def __call__(self, src, dst):
        """Write ``src`` (float32, 1-D) rounded to float16 into ``dst``."""
        out16 = dst.view(np.uint16)
        for i in range(0, src.size, self.chunk):
            k = min(self.chunk, src.size - i)
            x = src[i:i + k]
            w = x.view(np.uint32)
            f, twice = self._f[:k], self._twice[:k]
            bias, out, nan = self._bias[:k], self._out[:k], self._nan[:k]
            # |x| * 2^112 * 2^-110: overflows to inf beyond fp16's range and
            # leaves the rest to be rounded by one float addition
            np.abs(x, out=f)
            np.multiply(f, np.float32(2.0 ** 112), out=f)
            np.multiply(f, np.float32(2.0 ** -110), out=f)
            np.add(w, w, out=twice)                  # exponent in the top byte
            np.bitwise_and(twice, 0xFF000000, out=bias)
            np.maximum(bias, 0x71000000, out=bias)   # subnormals: fixed bias
            np.right_shift(bias, 1, out=bias)
            np.add(bias, 0x07800000, out=bias)
            np.add(f, bias.view(np.float32), out=f)  # the rounding happens here
            bits = f.view(np.uint32)
            np.right_shift(bits, 13, out=out)
            np.bitwise_and(out, 0x7C00, out=out)     # exponent
            np.bitwise_and(bits, 0x0FFF, out=bias)
            np.add(out, bias, out=out)               # + mantissa (carry is ok)
            np.greater(twice, 0xFF000000, out=nan)   # NaN -> quiet NaN
            out[nan] = 0x7E00
            np.right_shift(w, 16, out=bias)
            np.bitwise_and(bias, 0x8000, out=bias)   # sign
            np.bitwise_or(out, bias, out=out)
            out16[i:i + k] = out


class HalfCasts:
    """The three fp16 conversions ``asa16`` needs, on the fastest backend.

    ``torch`` (when importable) converts with the CPU's vector instructions
    through zero-copy ``torch.from_numpy`` views: 10-40x faster than numpy
    and bit-identical (round to nearest even, subnormals, inf, NaN). The
    ``numpy`` backend uses :class:`HalfCaster` for float32 -> float16 and
    numpy's own casts for the way back (exact: every fp16 is a float32).

    Args:
        backend: ``'auto'`` (torch if it imports, else numpy), ``'torch'`` or
            ``'numpy'``.

    Raises:
        ValueError: for an unknown backend.
        ImportError: for ``'torch'`` without torch installed.
    """

    def __init__(self, backend="auto"):
        if backend not in CAST_BACKENDS:
            raise ValueError(f"cast={backend!r} must be one of "
                             f"{list(CAST_BACKENDS)}")
        self._torch = None
        if backend in ("auto", "torch"):
            try:
                import torch
            except (ImportError, OSError) as exc:   # OSError: broken libs
                if backend == "torch":
                    raise ImportError(
                        f"cast='torch' needs torch ({exc}); install it or "
                        "use cast='numpy'") from None
            else:
                self._torch = torch
        self.backend = "torch" if self._torch is not None else "numpy"
        self._caster = HalfCaster()
        self._scratch = None

    def to_half(self, src, dst):
        """Round ``src`` into float16 ``dst`` (same length, 1-D).

        Only float32 takes the fast path; other types round directly with
        numpy (torch would round float64 twice, through float32).
        """
        if src.dtype != np.float32:
            np.copyto(dst, src, casting="same_kind")
        elif self._torch is not None:
            self._t(dst).copy_(self._t(src))
        else:
            self._caster(src, dst)

    def to_single(self, src, dst):
        """Widen float16 ``src`` into float32 ``dst`` (exact)."""
        if self._torch is not None:
            self._t(dst).copy_(self._t(src))
        else:
            np.copyto(dst, src, casting="same_kind")

    def sum_chunks(self, chunks, acc, out):
        """``out = fp16(sum_j chunks[j])``, the sum taken in float32.

        Args:
            chunks: ``p`` float16 arrays of length ``c`` (a list, or the
                rows of a ``(p, c)`` array).
            acc: float32 scratch of length ``c`` (holds the float32 sum).
            out: float16, length ``c``.

        With torch and ``p == 2`` one fp16 addition does it: torch adds
        fp16 in float32 and rounds once, and a float32 sum of two fp16
        values rounded to fp16 is the correctly rounded sum (24 >= 2*11 + 2
        bits, so the double rounding is innocuous): the same bits, 4x
        fewer passes.
        """
        p = len(chunks)
        if self._torch is not None:
            t = self._t
            if p == 2:
                self._torch.add(t(chunks[0]), t(chunks[1]), out=t(out))
                return
            acc_t = t(acc)
            acc_t.copy_(t(chunks[0]))
            if p > 1:
                if self._scratch is None or self._scratch.size != acc.size:
                    self._scratch = np.empty(acc.size, np.float32)
                scratch = t(self._scratch)
                for j in range(1, p):
                    scratch.copy_(t(chunks[j]))    # mixed-type add_ is slow
                    acc_t.add_(scratch)
            t(out).copy_(acc_t)
            return
        np.copyto(acc, chunks[0], casting="same_kind")
        for j in range(1, p):
            np.add(acc, chunks[j], out=acc)
        self._caster(acc, out)

    def _t(self, a):
        return self._torch.from_numpy(a)
