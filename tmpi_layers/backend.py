"""The graph library under the layers: Theano or PyTensor, chosen explicitly.

Both build symbolic graphs over shared variables and compile them with
``function(inputs, outputs, updates=...)``. A :class:`Backend` holds the
few operations whose names or availability differ (convolution, pooling,
random numbers, compiling) and the tmpi graph adapter that serves the
library; every layer is written once against it.

Choose the library with ``backend('pytensor')`` or ``backend('theano')``
(or pass ``lib=`` to :class:`tmpi_layers.Model`); ``backend()`` with no name
takes PyTensor if it imports, else Theano.

How graphs are compiled (:data:`COMPILES`, ``Model(compile=...)``):

* ``'optimized'`` (the default): the library's graph rewrites and C
  linker; fast steps, but the rewrites grow faster than the graph:
  ResNet-50's training step (about 8,000 nodes) takes minutes.
* ``'quick'``: no rewrites, the Python linker (each op's numpy
  implementation); convolution and pooling by strided slices on both
  libraries.
  ResNet-50 at width 1 on one CPU core, PyTensor, float64: 4 s to
  compile, 0.2 s a step of 4 images (``'optimized'``: about 170 s and
  0.02 s). For deep networks in tests and short runs.
"""

import functools
import importlib.util
import os

import numpy as np

__all__ = ["COMPILES", "LIBS", "Backend", "backend"]

#: The graph libraries the layers run on.
LIBS = ("pytensor", "theano")
#: How :meth:`Backend.function` compiles (see the module's notes).
COMPILES = ("optimized", "quick")


class Backend:
    """One graph library, as the layers see it.

    Attributes:
        name: ``'pytensor'`` or ``'theano'``.
        lib: the library's top module (``pytensor`` or ``theano``).
        T: its tensor module (``pytensor.tensor`` or ``theano.tensor``).
        floatX: the library's default float dtype (``config.floatX``).
        adapter: the tmpi adapter for this library
            (:mod:`tmpi_adapters.pytensor` or :mod:`tmpi_adapters.lasagne`).
        compile: ``'optimized'`` or ``'quick'`` (:data:`COMPILES`).

    Use :func:`backend` rather than the constructor: it caches one per name
    and compile.
    """

    def __init__(self, name, compile="optimized"):
        if compile not in COMPILES:
            raise ValueError(f"compile={compile!r} is unknown; choose one of "
                             f"{list(COMPILES)}")
        self.compile = compile
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
        if self.compile == "optimized":
            return f"Backend({self.name!r})"
        return f"Backend({self.name!r}, compile={self.compile!r})"

    def shared(self, value, name):
        """A shared variable holding ``value`` (copied), called ``name``."""
        return self.lib.shared(np.array(value), name=name)

    def function(self, inputs, outputs, updates=None):
        """Compile ``inputs -> outputs`` with ``updates``.

        ``compile='quick'``: no rewrites, the Python linker. Else Theano:
        its default mode; PyTensor: the C linker (``cvm``) unless
        ``PYTENSOR_FLAGS`` names a linker or mode: PyTensor 3's default,
        numba, takes minutes to JIT a convolutional network's graph, where
        the C linker's compiled ops are cached across runs.
        """
        mode = None
        if self.compile == "quick":
            mode = self.lib.compile.mode.Mode(linker="py", optimizer=None)
        elif self.name == "pytensor" and not _user_chose_pytensor_mode():
            from pytensor.compile.mode import Mode

            mode = Mode(linker="cvm", optimizer="fast_run")
        return self.lib.function(inputs, outputs, updates=updates or [],
                                 on_unused_input="ignore", mode=mode)

    def grad(self, cost, wrt):
        """Symbolic gradients of the scalar ``cost`` with respect to
        ``wrt``.

        Theano walks the graph recursively: a deep network's graph built
        from many small ops (ResNet-50's with ``compile='quick'``) passes
        Python's default recursion limit, so it is raised while Theano
        differentiates.
        """
        if self.name != "theano":
            return self.T.grad(cost, wrt)
        import sys

        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20000))
        try:
            return self.T.grad(cost, wrt)
        finally:
            sys.setrecursionlimit(limit)

    def input(self, ndim, name):
        """A symbolic floatX input of ``ndim`` (1 to 4) dimensions."""
        makers = {1: self.T.vector, 2: self.T.matrix, 3: self.T.tensor3,
                  4: self.T.tensor4}
        if ndim not in makers:
            raise ValueError(f"inputs of {ndim} dimensions are not supported "
                             "(1 to 4, batch axis included)")
        return makers[ndim](name, dtype=self.floatX)

    def conv2d(self, x, w, kernel_shape, stride, pad, in_shape):
        """Cross-correlation of NCHW ``x`` with ``w`` of ``kernel_shape``
        ``(F, C, kh, kw)``, zero padding ``pad`` on each side.

        ``in_shape`` is one sample's ``(C, H, W)`` (Python ints, known when
        the layer was built). Theano (``'optimized'``): its own ``conv2d``
        (CorrMM on CPU; its op has no Python implementation here, scipy
        being absent, so ``'quick'`` takes the general path). PyTensor 3
        has no 2-D convolution over channels, so the patches are
        gathered by strided slicing (one slice per kernel offset) and
        multiplied by the kernel in one matrix product. Every side and
        slice bound is a constant and the batch axis is left to ``-1``: a
        symbolic side (``x.shape[2]``) or batch size made PyTensor infer
        each deep layer's shape back through the whole network, and
        ResNet-50's training graph took minutes to compile.
        """
        T = self.T
        if self.name == "theano" and self.compile == "optimized":
            return T.nnet.conv2d(x, w, border_mode=(pad, pad),
                                 subsample=(stride, stride),
                                 filter_flip=False)
        f, c, kh, kw = kernel_shape
        h, wd = (int(d) for d in in_shape[1:])
        if pad:
            x = _zero_pad(T, x, pad)
            h, wd = h + 2 * pad, wd + 2 * pad
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
        cols = cols.reshape((-1, c * kh * kw))
        out = T.dot(cols, w.reshape((f, c * kh * kw)).T)
        return out.reshape((-1, oh, ow, f)).dimshuffle(0, 3, 1, 2)

    def pool2d(self, x, size, stride, mode, in_shape):
        """``mode`` ('max' or 'average') pooling of NCHW ``x`` without
        padding: windows ``size`` apart by ``stride``, the last partial
        window dropped; ``in_shape`` is one sample's ``(C, H, W)``.

        Theano (``'optimized'``): its ``pool_2d`` (whose Python
        implementation, the one ``'quick'`` would run, indexes with floats
        that numpy refuses); PyTensor 3 has none: the windows are combined
        from ``size**2`` strided slices (constant bounds, as in
        :meth:`conv2d`).
        """
        T = self.T
        if self.name == "theano" and self.compile == "optimized":
            from theano.tensor.signal.pool import pool_2d

            return pool_2d(x, ws=(size, size), stride=(stride, stride),
                           ignore_border=True,
                           mode="max" if mode == "max" else "average_inc_pad")
        h, w = (int(d) for d in in_shape[1:])
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


def _zero_pad(T, x, pad):
    """NCHW ``x`` with ``pad`` zeros on each side of its last two axes.

    Joined from zero blocks shaped like slices of ``x`` (``zeros_like``),
    not written into ``zeros((n, c, h, w))``: that needs the symbolic batch
    size, whose static inference goes back through every layer below.
    """
    for axis in (2, 3):
        edge = x[:, :, :pad] if axis == 2 else x[:, :, :, :pad]
        zeros = T.zeros_like(edge)
        x = T.concatenate([zeros, x, zeros], axis=axis)
    return x


def _user_chose_pytensor_mode():
    keys = {item.split("=")[0].strip()
            for item in os.environ.get("PYTENSOR_FLAGS", "").split(",")}
    return bool(keys & {"linker", "mode"})


@functools.lru_cache(maxsize=None)
def _cached(name, compile):
    return Backend(name, compile)


def backend(name=None, compile=None):
    """The :class:`Backend` for ``name`` (cached: one per library and
    compile).

    Args:
        name: ``'pytensor'``, ``'theano'``, a :class:`Backend` (returned
            as is unless ``compile`` differs), or None: PyTensor if it is
            installed, else Theano.
        compile: ``'optimized'`` or ``'quick'`` (:data:`COMPILES`); None
            keeps a given Backend's, else ``'optimized'``.

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
    if compile is not None and compile not in COMPILES:
        raise ValueError(f"compile={compile!r} is unknown; choose one of "
                         f"{list(COMPILES)}")
    if isinstance(name, Backend):
        if compile is None or compile == name.compile:
            return name
        return _cached(name.name, compile)
    compile = compile or "optimized"
    if name is None:
        for candidate in LIBS:
            if importlib.util.find_spec(candidate) is not None:
                return _cached(candidate, compile)
        raise ImportError("neither PyTensor nor Theano is installed: pip "
                          "install pytensor (or the theano extra)")
    if not isinstance(name, str) or name.lower() not in LIBS:
        raise ValueError(f"lib={name!r} is unknown; choose one of "
                         f"{list(LIBS)}")
    return _cached(name.lower(), compile)
