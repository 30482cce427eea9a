"""Exchangers: how the bytes of a fused buffer move between ranks.

Select one by name with :func:`make_exchanger`. Strategies carry the names
they had in Theano-MPI.
"""

from tmpi_core.exchangers.ar import AllreduceExchanger
from tmpi_core.exchangers.asa16 import HalfPrecisionExchanger
from tmpi_core.exchangers.base import Exchanger
from tmpi_core.exchangers.shm import SharedMemoryExchanger, on_one_host

__all__ = ["AllreduceExchanger", "Exchanger", "EXCHANGERS", "STRATEGIES",
           "HalfPrecisionExchanger", "SharedMemoryExchanger",
           "make_exchanger"]

EXCHANGERS = {"ar": AllreduceExchanger, "asa16": HalfPrecisionExchanger,
              "shm": SharedMemoryExchanger}

#: What a rule's ``strategy=`` accepts: an exchanger's name, or ``'auto'``
#: (``'shm'`` when every rank is on one host, else ``'ar'``).
STRATEGIES = ("auto", *sorted(EXCHANGERS))


def resolve_strategy(strategy, comm):
    """The exchanger name ``strategy`` stands for on ``comm`` (collective
    for ``'auto'``: every rank must learn the same answer)."""
    if strategy != "auto":
        return strategy
    return "shm" if on_one_host(comm) else "ar"


def make_exchanger(strategy, comm):
    """Build the exchanger called ``strategy`` on ``comm``.

    Args:
        strategy: one of :data:`STRATEGIES`: ``'ar'`` (fp32 Allreduce),
            ``'asa16'`` (fp16 on the wire), ``'shm'`` (MPI shared memory,
            every rank on one host; collective to make) or ``'auto'``
            (``'shm'`` on one host, else ``'ar'``; collective).
        comm: an ``mpi4py.MPI.Comm``.

    Raises:
        ValueError: for an unknown strategy, listing the known ones.
    """
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(
            f"strategy={strategy!r} is not a known exchanger; choose one of "
            f"{list(STRATEGIES)}")
    if strategy == "auto":
        Exchanger(comm)                    # checks comm before it is used
        strategy = resolve_strategy(strategy, comm)
    return EXCHANGERS[strategy](comm)
