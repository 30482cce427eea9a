"""Exchangers: how the bytes of a fused buffer move between ranks.

Select one by name with :func:`make_exchanger`. Strategies carry the names
they had in Theano-MPI; ``shm``, ``hier`` and ``hier16`` are tmpi's own.
"""

from tmpi_core.exchangers.ar import AllreduceExchanger
from tmpi_core.exchangers.asa16 import HalfPrecisionExchanger
from tmpi_core.exchangers.base import Exchanger
from tmpi_core.exchangers.hier import (HierarchicalExchanger,
                                       HierarchicalHalfExchanger, host_layout)
from tmpi_core.exchangers.shm import SharedMemoryExchanger

__all__ = ["AllreduceExchanger", "Exchanger", "EXCHANGERS", "STRATEGIES",
           "HalfPrecisionExchanger", "HierarchicalExchanger",
           "HierarchicalHalfExchanger", "SharedMemoryExchanger",
           "make_exchanger", "resolve_strategy"]

EXCHANGERS = {"ar": AllreduceExchanger, "asa16": HalfPrecisionExchanger,
              "hier": HierarchicalExchanger,
              "hier16": HierarchicalHalfExchanger,
              "shm": SharedMemoryExchanger}

#: What a rule's ``strategy=`` accepts: an exchanger's name, or ``'auto'``
#: (``'shm'`` when every rank is on one host, ``'ar'`` when each host has
#: one rank, else ``'hier'``).
STRATEGIES = ("auto", *sorted(EXCHANGERS))


def resolve_strategy(strategy, comm):
    """The exchanger name ``strategy`` stands for on ``comm`` (collective
    for ``'auto'``: every rank learns the same answer).

    ``'auto'`` is ``'shm'`` when every rank is on one host, ``'ar'`` when
    every host has one rank, and ``'hier'`` (shared memory on each host,
    ``ar`` between hosts) otherwise. Hosts are those of
    :func:`~tmpi_core.exchangers.shm.host_comm`.
    """
    if strategy != "auto":
        return strategy
    layout = host_layout(comm)
    layout.comm.Free()
    if len(layout.sizes) == 1:
        return "shm"
    return "ar" if max(layout.sizes) == 1 else "hier"


def make_exchanger(strategy, comm):
    """Build the exchanger called ``strategy`` on ``comm``.

    Args:
        strategy: one of :data:`STRATEGIES`: ``'ar'`` (fp32 Allreduce),
            ``'asa16'`` (fp16 on the wire), ``'shm'`` (MPI shared memory,
            every rank on one host; collective to make), ``'hier'`` (shared
            memory on each host, ``ar`` between hosts; collective),
            ``'hier16'`` (the same with ``asa16`` between hosts; collective)
            or ``'auto'`` (see :func:`resolve_strategy`; collective).
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
