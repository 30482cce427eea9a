"""The interface every exchanger follows."""

__all__ = ["Exchanger"]


class Exchanger:
    """Moves the bytes of a :class:`~tmpi_core.buffer.FlatBuffer` between ranks.

    Subclasses implement :meth:`allreduce_sum`; rules call nothing else on
    the hot path. Rules that want a mean pack their values scaled by ``1/p``
    (:meth:`FlatBuffer.pack`'s ``scale``), which costs no extra pass over
    memory. An exchanger is bound to one communicator.

    Args:
        comm: an ``mpi4py.MPI.Comm``.
    """

    name = None

    def __init__(self, comm):
        from mpi4py import MPI

        if not isinstance(comm, MPI.Comm):
            raise ValueError(
                f"comm={comm!r} must be an mpi4py.MPI.Comm, e.g. "
                "tmpi_core.get_context().comm")
        self.comm = comm
        self.size = comm.Get_size()

    def allreduce_sum(self, buffer):
        """Replace ``buffer.data`` by its sum over all ranks, in place."""
        raise NotImplementedError

    def free(self):
        """Release any persistent MPI requests (safe to call twice)."""
