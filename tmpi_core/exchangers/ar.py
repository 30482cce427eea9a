"""``ar``: one in-place MPI Allreduce of the fused fp32 buffer."""

from tmpi_core.exchangers.base import Exchanger

__all__ = ["AllreduceExchanger"]


class AllreduceExchanger(Exchanger):
    """Sum over ranks with a single ``MPI_Allreduce(IN_PLACE, SUM)``.

    ``x <- sum_i x_i``: one collective per exchange, nothing allocated.

    Args:
        comm: an ``mpi4py.MPI.Comm``.
    """

    name = "ar"

    def __init__(self, comm):
        super().__init__(comm)
        from mpi4py import MPI

        self._in_place = MPI.IN_PLACE
        self._sum = MPI.SUM

    def allreduce_sum(self, buffer):
        """Sum ``buffer.data`` over all ranks in place."""
        if self.size > 1:
            self.comm.Allreduce(self._in_place, buffer.data, op=self._sum)
