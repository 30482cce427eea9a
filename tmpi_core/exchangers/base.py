"""The interface every exchanger follows."""

__all__ = ["Exchanger"]


class Exchanger:
    """Moves the bytes of a :class:`~tmpi_core.buffer.FlatBuffer` between ranks.

    Subclasses implement :meth:`allreduce_mean`; rules call nothing else on
    the hot path. An exchanger is bound to one communicator.

    Args:
        comm: an ``mpi4py.MPI.Comm``.
    """

    name = None

    def __init__(self, comm):
        self.comm = comm
        self.size = comm.Get_size()

    def allreduce_mean(self, buffer):
        """Replace ``buffer.data`` by its mean over all ranks, in place."""
        raise NotImplementedError

    def free(self):
        """Release any persistent MPI requests (safe to call twice)."""
