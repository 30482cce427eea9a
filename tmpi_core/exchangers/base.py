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

    def allocate(self, n, dtype):
        """Storage for a fused buffer this exchanger will reduce: ``n``
        zeroed elements of ``dtype``. Plain memory here; an exchanger that
        shares memory between ranks returns its own (and then every rank
        must call this together, with the same arguments)."""
        import numpy as np

        return np.zeros(n, dtype)

    def free(self):
        """Release any persistent MPI requests (safe to call twice)."""
