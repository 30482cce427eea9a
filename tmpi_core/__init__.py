"""tmpi_core: framework-free MPI exchangers and synchronisation rules.

Only numpy and mpi4py are needed; mpi4py is imported when the first
:class:`Context` is made, not at import time.

Example:
    >>> from tmpi_core import make_rule
    >>> rule = make_rule("bsp", mode="grads")
    >>> params = rule.start(params)          # rank 0's values everywhere
    >>> grads = rule.on_gradients(grads)     # averaged over ranks
"""

from tmpi_core.broadcast import broadcast_arrays
from tmpi_core.buffer import FlatBuffer
from tmpi_core.checkpoint import (Checkpoint, CheckpointError, Checkpointer,
                                  Interrupted, ResumeError)
from tmpi_core.checks import check_same_across_ranks, describe_arrays
from tmpi_core.context import Context, get_context, install_abort_hook
from tmpi_core.data import (load_cifar10, load_dataset, load_digits,
                            load_idx, load_mnist, shard, shard_indices)
from tmpi_core.exchangers import (EXCHANGERS, STRATEGIES, AllreduceExchanger,
                                  Exchanger, HalfPrecisionExchanger,
                                  HierarchicalExchanger,
                                  HierarchicalHalfExchanger,
                                  SharedMemoryExchanger, make_exchanger)
from tmpi_core.recorder import Recorder, make_recorder
from tmpi_core.runs import read_run
from tmpi_core.rules import (BSP, EASGD, RULES, GoSGD, NonFiniteError, Rule,
                             make_rule)
from tmpi_core.watchdog import exchange_timeout, set_exchange_timeout
from tmpi_core.agreement import Decision, StopAgreement
from tmpi_core.launch import LaunchError, launch
from tmpi_core.state import ModelIO, TrainingState
from tmpi_core.uneven import UnevenBatches

from tmpi_core._version import __version__

__all__ = [
    "LaunchError",
    "launch",
    "UnevenBatches",
    "TrainingState",
    "ModelIO",
    "StopAgreement",
    "Decision",
    "AllreduceExchanger",
    "BSP",
    "Checkpoint",
    "CheckpointError",
    "Checkpointer",
    "Context",
    "EASGD",
    "EXCHANGERS",
    "Exchanger",
    "FlatBuffer",
    "GoSGD",
    "HalfPrecisionExchanger",
    "HierarchicalExchanger",
    "HierarchicalHalfExchanger",
    "Interrupted",
    "NonFiniteError",
    "RULES",
    "STRATEGIES",
    "SharedMemoryExchanger",
    "Recorder",
    "ResumeError",
    "Rule",
    "broadcast_arrays",
    "check_same_across_ranks",
    "describe_arrays",
    "exchange_timeout",
    "get_context",
    "install_abort_hook",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_idx",
    "load_mnist",
    "make_exchanger",
    "make_recorder",
    "make_rule",
    "set_exchange_timeout",
    "read_run",
    "shard",
    "shard_indices",
]
