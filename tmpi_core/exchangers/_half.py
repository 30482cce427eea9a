"""float32 -> float16 without numpy's per-element branches (for ``asa16``).

numpy's float16 cast is scalar code with a branch per element and is much
slower on values that become fp16 subnormals (gradients of order 1e-5);
``benchmarks/fp16_cast.py`` measures both. This one computes the same IEEE
rounding (to nearest even, with subnormals, overflow to inf and NaN) with
float32 and uint32 ufuncs on cache-sized chunks, bit for bit equal to
numpy's.
"""

import numpy as np

__all__ = ["HalfCaster"]


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
