"""Start-up checks that every rank agrees, raised on every rank at once."""

import numpy as np

__all__ = ["describe_arrays", "check_same_across_ranks"]


def describe_arrays(arrays, names=None):
    """Return ``[(name, shape, dtype), ...]`` for a list of arrays."""
    out = []
    for i, a in enumerate(arrays):
        name = names[i] if names is not None else f"#{i}"
        if a is None:
            out.append((name, None, None))
        else:
            dtype = getattr(a, "dtype", None)
            if dtype is None:
                dtype = np.asarray(a).dtype
            out.append((str(name), tuple(np.shape(a)), str(dtype)))
    return out


def check_same_across_ranks(ctx, spec, what):
    """Raise ``ValueError`` on every rank unless all ranks hold equal ``spec``.

    One small ``allgather`` of ``spec`` (a picklable value); every rank sees
    the same gathered list and so reaches the same verdict: either all pass
    or all raise, never a rank left waiting in a later collective.

    Args:
        ctx: a :class:`~tmpi_core.context.Context`.
        spec: a picklable description, a list of ``(name, shape, dtype)``
            for tensors (names are not compared, only reported) or a dict
            for configuration.
        what: what the spec describes, used in the message ("parameters").

    Raises:
        ValueError: naming the first rank that differs from rank 0 and how.
    """
    specs = ctx.allgather(spec)
    ref = specs[0]
    for rank, other in enumerate(specs[1:], start=1):
        if _comparable(other) == _comparable(ref):
            continue
        raise ValueError(_difference(what, ref, other, rank))


def _comparable(spec):
    # Tensor names only help the message: automatic names may differ between
    # ranks (one rank built an extra model) while the layouts agree.
    if isinstance(spec, (list, tuple)):
        return [e[1:] if isinstance(e, tuple) and len(e) == 3 else e
                for e in spec]
    return spec


def _difference(what, ref, other, rank):
    prefix = f"{what} differ across ranks: "
    if isinstance(ref, dict) and isinstance(other, dict):
        # a version difference first: it explains any other difference
        keys = sorted(set(ref) | set(other),
                      key=lambda k: (k != "tmpi", str(k)))
        for k in keys:
            if ref.get(k) != other.get(k):
                fix = ("install one tmpi version on every host" if k == "tmpi"
                       else "every rank must run the same configuration")
                return (prefix + f"{k}={other.get(k)!r} on rank {rank} but "
                        f"{ref.get(k)!r} on rank 0; {fix}")
    if isinstance(ref, (list, tuple)) and isinstance(other, (list, tuple)):
        if len(ref) != len(other):
            return (prefix + f"rank {rank} has {len(other)} {what}, rank 0 has "
                    f"{len(ref)}; every rank must build the same model")
        for i, (a, b) in enumerate(zip(ref, other)):
            if _comparable([a]) != _comparable([b]):
                return (prefix + f"entry {i} is {_fmt(b)} on rank {rank} but "
                        f"{_fmt(a)} on rank 0; every rank must build the same "
                        "model")
    return prefix + f"rank {rank} has {other!r}, rank 0 has {ref!r}"


def _fmt(entry):
    if isinstance(entry, tuple) and len(entry) == 3:
        name, shape, dtype = entry
        return f"{name!r} shape={shape} dtype={dtype}"
    return repr(entry)
