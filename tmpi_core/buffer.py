"""One fused, preallocated, contiguous float32 buffer with a view per tensor."""

import numbers

import numpy as np

__all__ = ["FlatBuffer"]


class FlatBuffer:
    """A contiguous float32 buffer holding many tensors back to back.

    Every tensor gets a numpy view (with its own shape) into one flat array,
    so a whole parameter or gradient set moves in a single collective call.
    Packing and unpacking copy element-wise into preallocated memory and
    allocate nothing.

    Args:
        shapes: the tensor shapes, in a fixed order that every rank shares.
        dtype: storage type; float32 (the default) is what the exchangers move.
        allocate: optional ``f(n, dtype)`` returning the zeroed 1-D storage
            (an exchanger's :meth:`~tmpi_core.Exchanger.allocate`, e.g. a
            segment of shared memory); default ``np.zeros``.
        tail: extra elements after the last tensor, outside every view
            (:attr:`tail`): a few scalars that travel in the same
            collective, such as BSP's count of ranks that had data.

    Attributes:
        data: the flat 1-D array (length :attr:`size`).
        views: one array per tensor, each a view into :attr:`data`.
        tail: the ``tail`` extra elements, a view into :attr:`data`.
        shapes: the shapes, as tuples.

    Example:
        >>> buf = FlatBuffer([(2, 3), (4,)])
        >>> buf.pack([np.ones((2, 3)), np.zeros(4)])
        >>> buf.data.shape
        (10,)
    """

    def __init__(self, shapes, *, dtype=np.float32, allocate=None, tail=0):
        self.shapes = []
        for i, s in enumerate(shapes):
            if isinstance(s, (str, bytes)) or not hasattr(s, "__iter__") \
                    or not all(isinstance(d, numbers.Integral) for d in s):
                raise ValueError(
                    f"shapes[{i}]={s!r} must be a tuple of integers, e.g. "
                    "(3,) or array.shape")
            self.shapes.append(tuple(int(d) for d in s))
        for s in self.shapes:
            if any(d < 0 for d in s):
                raise ValueError(f"shapes must be non-negative, got {s}")
        counts = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        if isinstance(tail, bool) or not isinstance(tail, numbers.Integral) \
                or tail < 0:
            raise ValueError(f"tail={tail!r} must be an integer >= 0")
        n = int(self.offsets[-1]) + int(tail)
        if allocate is None:
            self.data = np.zeros(n, dtype=dtype)
        else:
            data = allocate(n, np.dtype(dtype))
            if not (isinstance(data, np.ndarray) and data.shape == (n,)
                    and data.dtype == dtype and data.flags.c_contiguous
                    and data.flags.writeable):
                raise ValueError(
                    f"allocate({n}, {np.dtype(dtype)}) must return a "
                    f"writable contiguous 1-D {np.dtype(dtype)} array of "
                    f"{n} elements")
            self.data = data
        self.views = [
            self.data[int(a):int(b)].reshape(s)
            for a, b, s in zip(self.offsets[:-1], self.offsets[1:], self.shapes)
        ]
        self.tail = self.data[int(self.offsets[-1]):]
        self._fingerprint = None

    @property
    def fingerprint(self):
        """8 hex digits identifying the layout (shapes, dtype, tail): equal
        on ranks that exchange the same buffer, different otherwise."""
        if self._fingerprint is None:
            import zlib

            text = repr((self.shapes, str(self.data.dtype), self.tail.size))
            self._fingerprint = f"{zlib.crc32(text.encode()):08x}"
        return self._fingerprint

    @property
    def size(self):
        """Number of elements in the buffer."""
        return self.data.size

    @property
    def nbytes(self):
        """Bytes in the buffer."""
        return self.data.nbytes

    def __len__(self):
        return len(self.views)

    def pack(self, arrays, scale=None):
        """Copy ``arrays`` into the buffer, one per view, in order.

        ``None`` entries (e.g. a parameter without a gradient) are packed as
        zeros.

        Args:
            arrays: array-likes with the buffer's shapes.
            scale: optional factor applied while copying (same single pass
                over memory), e.g. ``1/p`` so that a sum over ranks is a mean.

        Raises:
            ValueError: on a count or shape mismatch, naming the index.
        """
        if len(arrays) != len(self.views):
            raise ValueError(
                f"expected {len(self.views)} arrays to pack, got {len(arrays)}"
            )
        for i, (view, a) in enumerate(zip(self.views, arrays)):
            if a is None:
                view.fill(0)
                continue
            if np.shape(a) != view.shape:
                raise ValueError(
                    f"array {i} has shape {np.shape(a)}, the buffer expects "
                    f"{view.shape}"
                )
            if scale is None:
                np.copyto(view, a, casting="same_kind")
            else:
                np.multiply(a, scale, out=view, casting="same_kind")

    def unpack(self, arrays):
        """Copy the buffer back into writable ``arrays`` (in place)."""
        if len(arrays) != len(self.views):
            raise ValueError(
                f"expected {len(self.views)} arrays to unpack into, "
                f"got {len(arrays)}"
            )
        for a, view in zip(arrays, self.views):
            np.copyto(a, view, casting="same_kind")
