"""Checkpoints: written by one rank, atomically; read back on every rank.

A checkpoint is one ``.npz`` file in a directory, ``ckpt-00000007.npz``,
holding named numpy arrays and a JSON ``meta`` record. Rank 0 writes it to a
temporary file in the same directory, flushes and ``fsync``\\ s it, then
renames it into place, so a reader only ever sees whole checkpoints: a job
killed while writing leaves the previous checkpoint as the latest. The
``keep`` newest are kept.

Arrays are either *shared* (the same on every rank, saved once from rank 0:
BSP's model) or *local* (this rank's own: a GoSGD worker's parameters and
weight, a momentum buffer in BSP ``'params'`` mode); rank 0 gathers the
local ones. Saving and loading are collective unless named otherwise.
"""

import glob
import json
import os
import random
import re
import warnings
import zipfile

import numpy as np

from tmpi_core._version import __version__
from tmpi_core.context import get_context
from tmpi_core.watchdog import guarded

__all__ = ["Checkpoint", "CheckpointError", "Checkpointer", "Interrupted",
           "ResumeError", "check_resumable",
           "get_rng_state", "read_checkpoint", "rule_state_arrays",
           "restore_rule_state", "set_rng_state"]

FORMAT = 1
_NAME = re.compile(r"^ckpt-(\d{8})\.npz$")
_META = "__meta__"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read (raised on every rank)."""


class ResumeError(ValueError):
    """A checkpoint that does not fit this run (another model, rule or
    number of ranks). Every rank reads the same checkpoint and raises it
    together, so the job ends without an MPI abort and every rank says why."""

    on_every_rank = True


class Interrupted(KeyboardInterrupt):
    """Raised on every rank after the ranks agreed to stop on a signal and
    wrote their final checkpoint; the job ends without an MPI abort."""

    on_every_rank = True


class Checkpoint:
    """A checkpoint read back by :meth:`Checkpointer.load`.

    Attributes:
        path: the file it came from.
        meta: the JSON record (``epoch``, ``step``, ``ranks``, rule config, ...).
        shared: arrays saved once, from rank 0.
        local: this rank's own arrays. When the checkpoint was written by a
            different number of ranks, rank ``r`` gets those of rank
            ``r % ranks`` and :attr:`same_ranks` is False.
        ranks: how many ranks wrote it.
        same_ranks: True when it is resumed on as many ranks as wrote it.
    """

    def __init__(self, path, meta, shared, local, ranks, same_ranks):
        self.path = path
        self.meta = meta
        self.shared = shared
        self.local = local
        self.ranks = ranks
        self.same_ranks = same_ranks

    def __repr__(self):
        return (f"Checkpoint({os.path.basename(self.path)!r}, "
                f"epoch={self.meta.get('epoch')}, step={self.meta.get('step')}, "
                f"ranks={self.ranks})")


class Checkpointer:
    """Write and read checkpoints of a distributed run in ``directory``.

    Args:
        directory: where checkpoints live; created by rank 0 if missing. On
            several hosts it must be a shared file system (rank 0 writes,
            rank 0 reads and broadcasts).
        keep: how many of the newest checkpoints to keep (``>= 1``).
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.

    Raises:
        ValueError: for a bad ``directory`` or ``keep``.

    Example:
        >>> ckpt = Checkpointer("run/ckpt", keep=2)
        >>> ckpt.save({"w": w}, meta={"epoch": 3})        # collective
        >>> state = ckpt.load()                           # None if none yet
    """

    def __init__(self, directory, *, keep=2, comm=None):
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise ValueError(
                f"directory={directory!r} must be a path (str or PathLike)")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep={keep!r} must be an integer >= 1")
        self.directory = os.fspath(directory)
        self.keep = keep
        self._comm = comm
        self.ctx = None

    # -- writing ----------------------------------------------------------
    def save(self, shared, *, local=None, meta=None):
        """Write a checkpoint (collective; rank 0 writes).

        Args:
            shared: ``{name: array}`` that every rank holds equal; rank 0's
                are written.
            local: ``{name: array}`` of this rank's own state, or None.
            meta: JSON-able dict (epoch, step, ...); ``ranks``, ``format``
                and the tmpi version are added.

        Returns:
            the path written, on every rank.

        Raises:
            CheckpointError: on every rank, when rank 0 cannot write (the
                previous checkpoint is kept).
        """
        ctx = self._context()
        local = _plain_arrays(local or {}, "local")
        with guarded(ctx, "the checkpoint save (gathering every rank's "
                          "state)"):
            locals_ = ctx.comm.gather(local, root=0)
        result = None
        if ctx.rank == 0:
            result = self._write_guarded(shared, locals_, meta, ctx.size)
        with guarded(ctx, "the checkpoint save (rank 0 writing)"):
            ok, value = ctx.bcast(result, root=0)
        if not ok:
            raise CheckpointError(value)
        return value

    def save_local(self, shared, *, meta=None):
        """Write a checkpoint from this rank alone (not collective).

        For a rank that holds the whole state by itself, like the
        asynchronous EASGD server with the center.

        Returns:
            the path written.

        Raises:
            CheckpointError: when it cannot be written (the previous is kept).
        """
        ok, value = self._write_guarded(shared, None, meta,
                                        self._context().size)
        if not ok:
            raise CheckpointError(value)
        return value

    def _write_guarded(self, shared, locals_, meta, ranks):
        previous = self.latest()
        try:
            return True, self._write(shared, locals_, meta, ranks)
        except (OSError, ValueError, TypeError) as e:
            kept = (f"the previous checkpoint {previous} is kept" if previous
                    else "no earlier checkpoint exists")
            return False, (f"could not write a checkpoint in "
                           f"{self.directory!r}: {type(e).__name__}: {e}; "
                           f"{kept}")

    def _write(self, shared, locals_, meta, ranks):
        os.makedirs(self.directory, exist_ok=True)
        record = dict(meta or {}, ranks=ranks, format=FORMAT,
                      tmpi=__version__)
        arrays = {f"shared/{k}": v
                  for k, v in _plain_arrays(shared, "shared").items()}
        for rank, local in enumerate(locals_ or []):
            arrays.update({f"rank{rank}/{k}": v for k, v in local.items()})
        record["local"] = bool(locals_ and any(locals_))
        arrays[_META] = json_array(record)
        number = self._next_number()
        final = os.path.join(self.directory, f"ckpt-{number:08d}.npz")
        temp = os.path.join(self.directory,
                            f".ckpt-{number:08d}.npz.tmp{os.getpid()}")
        try:
            with open(temp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, final)
        except BaseException:
            _remove_quietly(temp)
            raise
        _fsync_directory(self.directory)
        self._prune()
        return final

    def _next_number(self):
        numbers = [n for n, _ in self._listing()]
        return max(numbers) + 1 if numbers else 1

    def _prune(self):
        for _, path in self._listing()[:-self.keep]:
            _remove_quietly(path)

    # -- reading ------------------------------------------------------------
    def latest(self):
        """Path of the newest whole checkpoint on this rank's disk, or None."""
        listing = self._listing()
        return listing[-1][1] if listing else None

    def load(self, path=None):
        """Read a checkpoint on every rank (collective; rank 0 reads).

        Args:
            path: a checkpoint file; default the newest in the directory. A
                newest file that cannot be read is skipped, with a warning,
                for the one before it.

        Returns:
            a :class:`Checkpoint`, or ``None`` on every rank when the
            directory holds none.

        Raises:
            CheckpointError: on every rank, when ``path`` cannot be read.
        """
        ctx = self._context()
        payload, per_rank = None, None
        if ctx.rank == 0:
            payload, locals_ = self._read_guarded(path)
            if payload is not None and payload[0]:
                ranks = payload[1]["meta"]["ranks"]
                per_rank = [locals_.get(r % ranks, {})
                            for r in range(ctx.size)]
        with guarded(ctx, "the checkpoint load"):
            payload = ctx.bcast(payload, root=0)
            local = ctx.comm.scatter(per_rank, root=0)
        if payload is None:
            return None
        ok, value = payload
        if not ok:
            raise CheckpointError(value)
        meta = value["meta"]
        return Checkpoint(value["path"], meta, value["shared"], local,
                          meta["ranks"], meta["ranks"] == ctx.size)

    def _read_guarded(self, path):
        candidates = ([path] if path is not None
                      else [p for _, p in reversed(self._listing())])
        errors = []
        for candidate in candidates:
            try:
                meta, shared, locals_ = read_checkpoint(candidate)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                errors.append(f"{candidate}: {type(e).__name__}: {e}")
                if path is not None:
                    return (False, f"could not read checkpoint {errors[-1]}"), {}
                continue
            if errors:
                warnings.warn("skipped unreadable checkpoint(s): "
                              + "; ".join(errors), stacklevel=3)
            return (True, {"path": candidate, "meta": meta,
                           "shared": shared}), locals_
        if errors:
            return (False, "no readable checkpoint in "
                    f"{self.directory!r}: " + "; ".join(errors)), {}
        return None, {}

    def _listing(self):
        found = []
        for path in glob.glob(os.path.join(self.directory, "ckpt-*.npz")):
            match = _NAME.match(os.path.basename(path))
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def _context(self):
        if self.ctx is None:
            self.ctx = get_context(self._comm)
        self.ctx.ensure_abort_hook()
        return self.ctx


def read_checkpoint(path):
    """Read one checkpoint file on this rank alone.

    Returns:
        ``(meta, shared, locals_)``: the JSON record, the shared arrays and
        ``{rank: {name: array}}``.

    Raises:
        OSError, ValueError, KeyError, zipfile.BadZipFile: for a missing,
            foreign or damaged file.
    """
    with np.load(path, allow_pickle=False) as npz:
        if _META not in npz.files:
            raise ValueError("not a tmpi checkpoint (no meta record)")
        meta = from_json_array(npz[_META])
        if meta.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {meta.get('format')!r} is "
                             f"not {FORMAT}")
        shared, locals_ = {}, {}
        for key in npz.files:
            if key.startswith("shared/"):
                shared[key[len("shared/"):]] = npz[key]
            elif key.startswith("rank"):
                head, name = key.split("/", 1)
                locals_.setdefault(int(head[4:]), {})[name] = npz[key]
    return meta, shared, locals_


def check_resumable(checkpoint, rule, ctx):
    """Refuse a checkpoint this rule cannot continue; warn on a new rank count.

    Every rank holds the same checkpoint, so every rank decides alike.

    Args:
        checkpoint: a :class:`Checkpoint` from :meth:`Checkpointer.load`.
        rule: the :class:`tmpi_core.Rule` of this run, or None (nothing to
            compare).
        ctx: this run's :class:`tmpi_core.Context`.

    Raises:
        ResumeError: for other rule options (the tmpi version aside), or
            another number of ranks under a rule other than BSP.
    """
    theirs = checkpoint.meta.get("rule")
    if rule is not None and theirs is not None:
        ours = rule.config()
        differ = sorted(k for k in set(ours) | set(theirs)
                        if k != "tmpi" and ours.get(k) != theirs.get(k))
        if differ:
            raise ResumeError(
                f"checkpoint {checkpoint.path} was written with rule options "
                f"{theirs}; this run has {ours} (they differ in {differ}). "
                "Resume with the same rule, or start a new checkpoint "
                "directory")
    if checkpoint.same_ranks:
        return
    if rule is not None and not rule.resizable:
        raise ResumeError(
            f"checkpoint {checkpoint.path} was written by {checkpoint.ranks} "
            f"ranks; {rule.title} resumes only on as many ranks (this job "
            f"has {ctx.size}). BSP resumes on any number")
    if ctx.rank == 0:
        warnings.warn(
            f"resuming a checkpoint written by {checkpoint.ranks} ranks on "
            f"{ctx.size}: the global batch changes by "
            f"{ctx.size / checkpoint.ranks:g}x; scale the learning rate to "
            "match (lr_scaling='linear' scales it by the number of ranks)",
            stacklevel=3)


def rule_state_arrays(rule, prefix="rule/"):
    """A rule's :meth:`~tmpi_core.Rule.state_dict` as checkpoint arrays.

    Returns:
        ``(shared, local)``: dicts of arrays. Names in ``rule.shared_state``
        go to ``shared``; arrays of this rank and a JSON record of the
        plain values (``<prefix>json``) go to ``local``.
    """
    shared, local, plain = {}, {}, {}
    for key, value in rule.state_dict().items():
        if isinstance(value, np.ndarray):
            target = shared if key in rule.shared_state else local
            target[prefix + key] = value
        else:
            plain[key] = value
    local[prefix + "json"] = json_array(plain)
    return shared, local


def restore_rule_state(rule, checkpoint, prefix="rule/"):
    """Load a rule's state from a :class:`Checkpoint` (after ``start``)."""
    state = {}
    for source in (checkpoint.local, checkpoint.shared):
        for key, value in source.items():
            if key.startswith(prefix):
                name = key[len(prefix):]
                if name == "json":
                    state.update(from_json_array(value))
                else:
                    state[name] = value
    if "step" not in state:
        raise CheckpointError(
            f"{checkpoint.path} holds no {prefix!r} state for this rule")
    rule.load_state_dict(state)


def json_array(value):
    """JSON-able ``value`` as a uint8 array, to store beside numpy arrays."""
    return np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)


def from_json_array(array):
    """The value :func:`json_array` stored."""
    return json.loads(np.asarray(array, np.uint8).tobytes().decode())


def get_rng_state():
    """Python's and numpy's global random states, as JSON-able data."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": [name, keys.tolist(), int(pos), int(has_gauss),
                      float(gauss)],
            "python": [version, list(internal), gauss_next]}


def set_rng_state(state):
    """Restore what :func:`get_rng_state` returned."""
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss,
                         gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _plain_arrays(arrays, what):
    if not isinstance(arrays, dict):
        raise TypeError(f"{what} state must be a dict of arrays, got "
                        f"{type(arrays).__name__}")
    out = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key or key.startswith("__"):
            raise ValueError(f"bad {what} state name {key!r}")
        out[key] = np.asarray(value)
        if out[key].dtype == object:
            raise TypeError(f"{what} state {key!r} is not numeric")
    return out


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass
