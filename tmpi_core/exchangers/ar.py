"""``ar``: one in-place MPI Allreduce of the fused fp32 buffer."""

import numpy as np

from tmpi_core.exchangers.base import Exchanger

__all__ = ["AllreduceExchanger"]


class AllreduceExchanger(Exchanger):
    """Mean over ranks with a single ``MPI_Allreduce(IN_PLACE, SUM)``.

    ``x <- (1/p) * sum_i x_i``: one collective per exchange, nothing
    allocated, the division done in place.

    Args:
        comm: an ``mpi4py.MPI.Comm``.
    """

    name = "ar"

    def __init__(self, comm):
        super().__init__(comm)
        from mpi4py import MPI

        self._in_place = MPI.IN_PLACE
        self._sum = MPI.SUM

    def allreduce_mean(self, buffer):
        """Average ``buffer.data`` over all ranks in place."""
        data = buffer.data
        if self.size == 1:
            return
        self.comm.Allreduce(self._in_place, data, op=self._sum)
        np.multiply(data, np.float32(1.0 / self.size), out=data)
