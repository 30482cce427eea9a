"""``asa16``: a sum over ranks with half-precision (fp16) on the wire."""

import numpy as np

from tmpi_core.exchangers._half import HalfCaster
from tmpi_core.exchangers.base import Exchanger

__all__ = ["HalfPrecisionExchanger"]


class HalfPrecisionExchanger(Exchanger):
    """Reduce-scatter + allgather with fp16 messages, fp32 arithmetic.

    Theano-MPI's ``asa16``. The buffer (length ``n``, padded to ``p*c``) is
    cast to fp16 and cut into ``p`` chunks of ``c``; an ``Alltoall`` gives
    rank ``j`` every rank's chunk ``j``, which it sums in fp32; an
    ``Allgather`` of the fp16 sums gives every rank the whole result. Each
    rank sends and receives ``2 (p-1) c`` fp16 values, half the bytes of an
    fp32 ring allreduce.

    Error: every value crosses fp16 twice (its own contribution, then the
    reduced sum), so per element ``|result - exact| <= u (sum_i |x_i| +
    |sum_i x_i|) + (p + 1) t`` with ``u = 2**-11`` (fp16 unit roundoff) and
    ``t = 2**-25`` (half the smallest fp16 subnormal), plus fp32 rounding of
    the p-term sum. Values beyond fp16's range (65504) overflow to inf: use
    it for averaged gradients (tmpi scales them by ``1/p`` before sending),
    not for raw sums of large numbers.

    Args:
        comm: an ``mpi4py.MPI.Comm``.
    """

    name = "asa16"

    def __init__(self, comm):
        super().__init__(comm)
        self._n = None
        self._to_half = HalfCaster()

    def _allocate(self, n):
        p = self.size
        c = -(-n // p)                       # ceil(n / p)
        self._n, self._c = n, c
        self._send = np.zeros(p * c, np.float16)   # padding stays zero
        self._recv = np.empty(p * c, np.float16)
        self._acc = np.empty(c, np.float32)
        self._mine = np.empty(c, np.float16)
        self._all = np.empty(p * c, np.float16)

    def allreduce_sum(self, buffer):
        """Sum ``buffer.data`` over all ranks in place (fp16 on the wire)."""
        if self.size == 1:
            return
        data = buffer.data
        n = data.size
        if n != self._n:
            self._allocate(n)
        p, c = self.size, self._c
        self._cast(data, self._send[:n])
        self.comm.Alltoall(self._send, self._recv)
        chunks = self._recv.reshape(p, c)
        np.copyto(self._acc, chunks[0])
        for j in range(1, p):
            np.add(self._acc, chunks[j], out=self._acc)
        self._cast(self._acc, self._mine)
        self.comm.Allgather(self._mine, self._all)
        np.copyto(data, self._all[:n], casting="same_kind")

    def _cast(self, src, dst):
        # numpy's own cast is 2-25x slower on gradient-sized values; the
        # branch-free one gives the same bits (benchmarks/fp16_cast.py).
        if src.dtype == np.float32:
            self._to_half(src, dst)
        else:
            np.copyto(dst, src, casting="same_kind")
