"""Exchangers: how the bytes of a fused buffer move between ranks.

Select one by name with :func:`make_exchanger`. Strategies carry the names
they had in Theano-MPI.
"""

from tmpi_core.exchangers.ar import AllreduceExchanger
from tmpi_core.exchangers.asa16 import HalfPrecisionExchanger
from tmpi_core.exchangers.base import Exchanger
from tmpi_core.exchangers.shm import SharedMemoryExchanger

__all__ = ["AllreduceExchanger", "Exchanger", "EXCHANGERS",
           "HalfPrecisionExchanger", "SharedMemoryExchanger",
           "make_exchanger"]

EXCHANGERS = {"ar": AllreduceExchanger, "asa16": HalfPrecisionExchanger,
              "shm": SharedMemoryExchanger}


def make_exchanger(strategy, comm):
    """Build the exchanger called ``strategy`` on ``comm``.

    Args:
        strategy: one of :data:`EXCHANGERS`: ``'ar'`` (fp32 Allreduce),
            ``'asa16'`` (fp16 on the wire) or ``'shm'`` (MPI shared memory,
            every rank on one host; collective to make).
        comm: an ``mpi4py.MPI.Comm``.

    Raises:
        ValueError: for an unknown strategy, listing the known ones.
    """
    try:
        cls = EXCHANGERS[strategy]
    except (KeyError, TypeError):
        raise ValueError(
            f"strategy={strategy!r} is not a known exchanger; choose one of "
            f"{sorted(EXCHANGERS)}"
        ) from None
    return cls(comm)
