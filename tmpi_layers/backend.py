"""The graph library under the layers: Theano or PyTensor, chosen explicitly.

Both build symbolic graphs over shared variables and compile them with
``function(inputs, outputs, updates=...)``. A :class:`Backend` holds the
few operations whose names or availability differ (convolution, pooling,
random numbers, compiling) and the tmpi graph adapter that serves the
library; every layer is written once against it.

Choose the library with ``backend('pytensor')`` or ``backend('theano')``
(or pass ``lib=`` to :class:`tmpi_layers.Model`); ``backend()`` with no name
takes PyTensor if it imports, else Theano.
"""

import functools
import importlib.util
import os

import numpy as np

__all__ = ["LIBS", "Backend", "backend"]

#: The graph libraries the layers run on.
LIBS = ("pytensor", "theano")


class Backend:
    """One graph library, as the layers see it.

    Attributes:
        name: ``'pytensor'`` or ``'theano'``.
        lib: the library's top module (``pytensor`` or ``theano``).
        T: its tensor module (``pytensor.tensor`` or ``theano.tensor``).
        floatX: the library's default float dtype (``config.floatX``).
        adapter: the tmpi adapter for this library
            (:mod:`tmpi_adapters.pytensor` or :mod:`tmpi_adapters.lasagne`).

    Use :func:`backend` rather than the constructor: it caches one per name.
    """

    def __init__(self, name):
        if name not in LIBS:
            raise ValueError(f"lib={name!r} is unknown; choose one of "
                             f"{list(LIBS)}")
        if importlib.util.find_spec(name) is None:
            where = (".venv (numpy 2): pip install pytensor"
                     if name == "pytensor" else
                     ".venv-theano (numpy < 1.24): pip install -e '.[theano]'")
            raise ImportError(f"lib={name!r}: {name} is not installed here; "
                              f"it lives in {where}")
        self.name = name
        if name == "theano":
            import theano
            import theano.tensor as T

            import tmpi_adapters.lasagne as adapter
        else:
            import pytensor as theano
            import pytensor.tensor as T

            import tmpi_adapters.pytensor as adapter
        self.lib, self.T, self.adapter = theano, T, adapter
        self.floatX = str(theano.config.floatX)

    def __repr__(self):
        return f"Backend({self.name!r})"

    def shared(self, value, name):
        """A shared variable holding ``value`` (copied), called ``name``."""
        return self.lib.shared(np.array(value), name=name)

    def function(self, inputs, outputs, updates=None):
        """Compile ``inputs -> outputs`` with ``updates``.

        Theano: its default mode. PyTensor: the C linker (``cvm``) unless
        ``PYTENSOR_FLAGS`` names a linker or mode: PyTensor 3's default,
        numba, takes minutes to JIT a convolutional network's graph, where
        the C linker's compiled ops are cached across runs.
        """
        mode = None
        if self.name == "pytensor" and not _user_chose_pytensor_mode():
            from pytensor.compile.mode import Mode

            mode = Mode(linker="cvm", optimizer="fast_run")
        return self.lib.function(inputs, outputs, updates=updates or [],
                                 on_unused_input="ignore", mode=mode)

    def grad(self, cost, wrt):
        """Symbolic gradients of the scalar ``cost`` with respect to
        ``wrt``."""
        return self.T.grad(cost, wrt)

    def input(self, ndim, name):
        """A symbolic floatX input of ``ndim`` (1 to 4) dimensions."""
        makers = {1: self.T.vector, 2: self.T.matrix, 3: self.T.tensor3,
                  4: self.T.tensor4}
        if ndim not in makers:
            raise ValueError(f"inputs of {ndim} dimensions are not supported "
                             "(1 to 4, batch axis included)")
        return makers[ndim](name, dtype=self.floatX)

    def conv2d(self, x, w, kernel_shape, stride, pad):
        """Cross-correlation of NCHW ``x`` with ``w`` of ``kernel_shape``
        ``(F, C, kh, kw)``, zero padding ``pad`` on each side.

        Theano: its own ``conv2d`` (CorrMM on CPU). PyTensor 3 has no 2-D
        convolution over channels, so the patches are gathered by strided
        slicing (one slice per kernel offset) and multiplied by the kernel
        in one matrix product, which PyTensor hands to BLAS.
        """
        T = self.T
        if self.name == "theano":
            return T.nnet.conv2d(x, w, border_mode=(pad, pad),
                                 subsample=(stride, stride),
                                 filter_flip=False)
        f, c, kh, kw = kernel_shape
        n, h, wd = x.shape[0], x.shape[2], x.shape[3]
        if pad:
            h, wd = h + 2 * pad, wd + 2 * pad
            x = T.set_subtensor(
                T.zeros((n, c, h, wd), dtype=x.dtype)[:, :, pad:h - pad,
                                                       pad:wd - pad], x)
        oh = (h - kh) // stride + 1
        ow = (wd - kw) // stride + 1
        if kh == kw == 1:
            cols = x[:, :, ::stride, ::stride] if stride > 1 else x
            cols = cols.dimshuffle(0, 2, 3, 1)              # N, oh, ow, C
        else:
            patches = [x[:, :, i:i + stride * (oh - 1) + 1:stride,
                         j:j + stride * (ow - 1) + 1:stride]
                       for i in range(kh) for j in range(kw)]
            # N, oh, ow, C, kh*kw: the order of w's (C, kh, kw) flattening
            cols = T.stack(patches, axis=-1).dimshuffle(0, 2, 3, 1, 4)
        cols = cols.reshape((n * oh * ow, c * kh * kw))
        out = T.dot(cols, w.reshape((f, c * kh * kw)).T)
        return out.reshape((n, oh, ow, f)).dimshuffle(0, 3, 1, 2)

    def pool2d(self, x, size, stride, mode):
        """``mode`` ('max' or 'average') pooling of NCHW ``x`` without
        padding: windows ``size`` apart by ``stride``, the last partial
        window dropped.

        Theano: its ``pool_2d``; PyTensor 3 has none, so the windows are
        combined from ``size**2`` strided slices.
        """
        T = self.T
        if self.name == "theano":
            from theano.tensor.signal.pool import pool_2d

            return pool_2d(x, ws=(size, size), stride=(stride, stride),
                           ignore_border=True,
                           mode="max" if mode == "max" else "average_inc_pad")
        h, w = x.shape[2], x.shape[3]
        oh = (h - size) // stride + 1
        ow = (w - size) // stride + 1
        out = None
        for i in range(size):
            for j in range(size):
                s = x[:, :, i:i + stride * (oh - 1) + 1:stride,
                      j:j + stride * (ow - 1) + 1:stride]
                if out is None:
                    out = s
                else:
                    out = T.maximum(out, s) if mode == "max" else out + s
        return out if mode == "max" else out / (size * size)

    def random_streams(self, seed):
        """A source of random numbers for dropout, seeded with ``seed``."""
        if self.name == "theano":
            from theano.sandbox.rng_mrg import MRG_RandomStreams

            return MRG_RandomStreams(seed)
        import pytensor.tensor.random as ptr

        return ptr.shared_rng(seed=seed, name="tmpi_layers_rng")

    def uniform(self, streams, shape, rng_next=None):
        """Uniform [0, 1) floatX numbers of symbolic ``shape``.

        Args:
            streams: from :meth:`random_streams`.
            shape: the symbolic shape.
            rng_next: PyTensor: the generator state after the previous draw
                of the same graph (None for the first).

        Returns:
            ``(numbers, state_after)``: Theano's generator advances by
            itself (``state_after`` is None); PyTensor's state after the
            last draw must be compiled as the update of ``streams``.
        """
        if self.name == "theano":
            return streams.uniform(size=shape, dtype=self.floatX), None
        rng = streams if rng_next is None else rng_next
        after, u = rng.uniform(size=shape)
        return u.astype(self.floatX), after


def _user_chose_pytensor_mode():
    keys = {item.split("=")[0].strip()
            for item in os.environ.get("PYTENSOR_FLAGS", "").split(",")}
    return bool(keys & {"linker", "mode"})


@functools.lru_cache(maxsize=None)
def _cached(name):
    return Backend(name)


def backend(name=None):
    """The :class:`Backend` for ``name`` (cached: one per library).

    Args:
        name: ``'pytensor'``, ``'theano'``, a :class:`Backend` (returned
            as is), or None: PyTensor if it is installed, else Theano.

    Returns:
        Backend.

    Raises:
        ValueError: for an unknown name.
        ImportError: if the library is not installed (or, for None, neither
            is).

    Example:
        >>> lib = tmpi_layers.backend("pytensor")
        >>> x = lib.input(4, "x")
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        for candidate in LIBS:
            if importlib.util.find_spec(candidate) is not None:
                return _cached(candidate)
        raise ImportError("neither PyTensor nor Theano is installed: pip "
                          "install pytensor (or the theano extra)")
    if not isinstance(name, str) or name.lower() not in LIBS:
        raise ValueError(f"lib={name!r} is unknown; choose one of "
                         f"{list(LIBS)}")
    return _cached(name.lower())
