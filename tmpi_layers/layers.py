"""Layers: small objects that own shared variables and map a symbolic input
to a symbolic output.

A layer is configured by its constructor (``Conv2D(16, 3, pad=1)``), gets
its input shape and creates its variables in :meth:`Layer.build`, and maps
a symbolic batch to a symbolic batch in ``layer(x, phase)``. Shapes exclude
the batch axis; images are ``(channels, height, width)`` (NCHW batches).
:class:`Sequential` and :class:`Residual` compose layers into networks;
:class:`tmpi_layers.Model` builds one and compiles its training and
validation steps.

Example:
    >>> net = Sequential([Conv2D(16, 3, pad=1), BatchNorm(), ReLU(),
    ...                   MaxPool2D(2), Dense(10)])
    >>> model = Model(net, (1, 32, 32), lib="pytensor")
"""

import numpy as np

from tmpi_layers import init as _init

__all__ = ["Builder", "Phase", "Layer", "Dense", "Conv2D", "MaxPool2D",
           "AvgPool2D", "GlobalAvgPool", "BatchNorm", "Dropout", "ReLU",
           "Sequential", "Residual"]


class Builder:
    """What :meth:`Layer.build` needs: the backend, a seeded generator for
    initial values, and the dtype of the variables.

    Args:
        lib: the :class:`tmpi_layers.Backend`.
        rng: a ``numpy.random.RandomState`` for initial values.
        dtype: dtype of the shared variables (default: the backend's
            floatX).
    """

    def __init__(self, lib, rng, dtype=None):
        self.lib = lib
        self.rng = rng
        self.dtype = dtype or lib.floatX

    def variable(self, layer, name, spec, shape, *, fan_in=1, fan_out=1):
        """A shared variable ``'<layer path>.<name>'`` initialised by
        ``spec`` (see :func:`tmpi_layers.init.resolve`)."""
        path = f"{layer.path}.{name}"
        value = _init.resolve(spec, tuple(shape), fan_in, fan_out, self.rng,
                              what=path)
        return self.lib.shared(value.astype(self.dtype), path)


class Phase:
    """One symbolic pass through a network: training or inference.

    Layers read :attr:`training` (batch statistics and dropout in training,
    running statistics and no dropout otherwise), register the updates
    their state needs with :meth:`add_update` (batch norm's running
    averages) and draw random numbers with :meth:`uniform` (dropout).

    Args:
        lib: the :class:`tmpi_layers.Backend`.
        training: True for the training graph.
        streams: the random source (:meth:`Backend.random_streams`), needed
            by dropout in training.
    """

    def __init__(self, lib, *, training, streams=None):
        self.lib = lib
        self.training = bool(training)
        self.streams = streams
        self._updates = []
        self._rng_next = None

    def add_update(self, var, new):
        """Compile ``var <- new`` with the pass."""
        self._updates.append((var, new))

    def uniform(self, shape, *, who):
        """Uniform [0, 1) numbers of symbolic ``shape``, independent of
        every earlier draw of this pass.

        Raises:
            ValueError: naming ``who`` when the pass has no ``streams``.
        """
        if self.streams is None:
            raise ValueError(f"{who} draws random numbers in training: "
                             "give Phase(streams=lib.random_streams(seed))")
        u, self._rng_next = self.lib.uniform(self.streams, shape,
                                             self._rng_next)
        return u

    @property
    def updates(self):
        """``[(shared, new_value)]`` to compile with the graph: the state
        updates, then the random generator's."""
        rng = [] if self._rng_next is None or self.lib.name == "theano" \
            else [(self.streams, self._rng_next)]
        return self._updates + rng


class Layer:
    """Base class: one job, its own variables, a symbolic ``forward``.

    Subclasses implement ``_build(in_shape, builder) -> out_shape`` (create
    variables with ``builder.variable`` and register them with
    :meth:`_add_param` or :meth:`_add_state`) and ``forward(x, phase)``.

    Args:
        name: the layer's name in parameter names (default: its class and
            position in its container).

    Attributes:
        in_shape, out_shape: shapes without the batch axis, once built.
        path: the dotted name of the layer in its network, once built.
    """

    def __init__(self, *, name=None):
        if name is not None and (not isinstance(name, str) or not name
                                 or "." in name):
            raise ValueError(f"name={name!r} must be a non-empty string "
                             "without dots")
        self.name = name
        self.in_shape = self.out_shape = None
        self.path = name or type(self).__name__.lower()
        self._params, self._state, self._decay = [], [], []

    def __repr__(self):
        return f"{type(self).__name__}({self.path!r})"

    @property
    def label(self):
        """``"Conv2D 'stage1.conv1'"``: how errors name the layer."""
        return f"{type(self).__name__} {self.path!r}"

    def build(self, in_shape, builder, *, prefix=""):
        """Create the variables for inputs of ``in_shape``.

        Args:
            in_shape: the input shape without the batch axis.
            builder: a :class:`Builder`.
            prefix: the container's path and a dot, for parameter names.

        Returns:
            the output shape without the batch axis.

        Raises:
            ValueError: naming the layer and the shapes, when the layer
                cannot take this input; or when it is already built (a
                layer object has one place in one network).
        """
        if self.out_shape is not None:
            raise ValueError(
                f"{self.label} is already built (for input {self.in_shape}); "
                "a layer object has one place in one network: make a new one")
        self.path = prefix + (self.name or type(self).__name__.lower())
        self.in_shape = tuple(int(d) for d in in_shape)
        self.out_shape = tuple(int(d) for d in
                               self._build(self.in_shape, builder))
        return self.out_shape

    def _build(self, in_shape, builder):
        return in_shape

    def forward(self, x, phase):
        """The symbolic output for the symbolic batch ``x``."""
        raise NotImplementedError

    def __call__(self, x, phase):
        if self.out_shape is None:
            raise ValueError(f"{self.label} is not built: call "
                             "layer.build(in_shape, builder) or use it in a "
                             "Model")
        return self.forward(x, phase)

    def children(self):
        """The layers inside this one (containers), in order."""
        return []

    def _add_param(self, var, *, decay=False):
        self._params.append(var)
        if decay:
            self._decay.append(var)
        return var

    def _add_state(self, var):
        self._state.append(var)
        return var

    @property
    def params(self):
        """Trainable shared variables, this layer's and its children's."""
        return self._params + [p for c in self.children() for p in c.params]

    @property
    def state(self):
        """Non-trainable shared variables updated in training (batch norm's
        running statistics)."""
        return self._state + [s for c in self.children() for s in c.state]

    @property
    def decayed(self):
        """The parameters weight decay applies to (weights, not biases or
        batch norm's scale and shift)."""
        return self._decay + [p for c in self.children() for p in c.decayed]


def _activation(name, where):
    if name in (None, "linear"):
        return None
    if name == "relu":
        return "relu"
    raise ValueError(f"{where}: activation={name!r} is unknown; use None or "
                     "'relu' (or a ReLU layer)")


def _apply_activation(act, x, T):
    return x if act is None else T.maximum(x, 0)


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        raise ValueError(f"{what}={value!r} must be a positive integer")
    return int(value)


class Dense(Layer):
    """Fully connected: ``y = act(x W + b)``; inputs of more than one axis
    are flattened first.

    Args:
        units: output features.
        activation: None or ``'relu'``.
        W: initialiser of the ``(in_features, units)`` weights (default
            :func:`~tmpi_layers.init.he_normal` with ReLU, else
            :func:`~tmpi_layers.init.glorot_uniform`).
        b: initialiser of the bias, or None for no bias.
        name: see :class:`Layer`.
    """

    def __init__(self, units, *, activation=None, W=None, b=0.0, name=None):
        super().__init__(name=name)
        self.units = _positive_int(units, "units")
        self.activation = _activation(activation, "Dense")
        self.W_init = W or (_init.he_normal if self.activation
                            else _init.glorot_uniform)
        self.b_init = b

    def _build(self, in_shape, builder):
        fan_in = int(np.prod(in_shape))
        self.W = self._add_param(builder.variable(
            self, "W", self.W_init, (fan_in, self.units), fan_in=fan_in,
            fan_out=self.units), decay=True)
        self.b = None if self.b_init is None else self._add_param(
            builder.variable(self, "b", self.b_init, (self.units,)))
        return (self.units,)

    def forward(self, x, phase):
        T = phase.lib.T
        if len(self.in_shape) > 1:
            x = x.reshape((x.shape[0], -1))
        y = T.dot(x, self.W)
        if self.b is not None:
            y = y + self.b
        return _apply_activation(self.activation, y, T)


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in every deep-learning
    library) of ``(C, H, W)`` inputs: ``y = act(x * W + b)``.

    Output side ``(H + 2 pad - size) // stride + 1``.

    Args:
        filters: output channels.
        size: square kernel side.
        stride: step between windows.
        pad: zeros added on each side, or ``'same'`` (``size // 2``, odd
            sizes: the output keeps the input's side when ``stride == 1``).
        activation: None or ``'relu'``.
        W: initialiser of the ``(filters, C, size, size)`` kernel (default
            :func:`~tmpi_layers.init.he_normal`).
        b: initialiser of the bias, or None for no bias (before batch norm).
        name: see :class:`Layer`.
    """

    def __init__(self, filters, size, *, stride=1, pad=0, activation=None,
                 W=_init.he_normal, b=0.0, name=None):
        super().__init__(name=name)
        self.filters = _positive_int(filters, "filters")
        self.size = _positive_int(size, "size")
        self.stride = _positive_int(stride, "stride")
        if pad == "same":
            if self.size % 2 == 0:
                raise ValueError(f"pad='same' needs an odd size, got "
                                 f"size={size}")
            pad = self.size // 2
        if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) \
                or pad < 0:
            raise ValueError(f"pad={pad!r} must be an integer >= 0 or 'same'")
        self.pad = int(pad)
        self.activation = _activation(activation, "Conv2D")
        self.W_init, self.b_init = W, b

    def _build(self, in_shape, builder):
        if len(in_shape) != 3:
            raise ValueError(
                f"{self.label} takes (channels, height, width) inputs, got "
                f"shape {in_shape}")
        c, h, w = in_shape
        oh = (h + 2 * self.pad - self.size) // self.stride + 1
        ow = (w + 2 * self.pad - self.size) // self.stride + 1
        if min(h, w) + 2 * self.pad < self.size:
            raise ValueError(
                f"{self.label}: a {self.size}x{self.size} kernel does not fit "
                f"input {in_shape} with pad={self.pad}")
        self.kernel_shape = (self.filters, c, self.size, self.size)
        fan_in = c * self.size * self.size
        self.W = self._add_param(builder.variable(
            self, "W", self.W_init, self.kernel_shape, fan_in=fan_in,
            fan_out=self.filters * self.size * self.size), decay=True)
        self.b = None if self.b_init is None else self._add_param(
            builder.variable(self, "b", self.b_init, (self.filters,)))
        return (self.filters, oh, ow)

    def forward(self, x, phase):
        y = phase.lib.conv2d(x, self.W, self.kernel_shape, self.stride,
                             self.pad, self.in_shape)
        if self.b is not None:
            y = y + self.b.dimshuffle("x", 0, "x", "x")
        return _apply_activation(self.activation, y, phase.lib.T)


class _Pool2D(Layer):
    mode = None

    def __init__(self, size, stride=None, *, name=None):
        super().__init__(name=name)
        self.size = _positive_int(size, "size")
        self.stride = self.size if stride is None else \
            _positive_int(stride, "stride")

    def _build(self, in_shape, builder):
        if len(in_shape) != 3:
            raise ValueError(
                f"{self.label} takes (channels, height, width) inputs, got "
                f"shape {in_shape}")
        c, h, w = in_shape
        if min(h, w) < self.size:
            raise ValueError(f"{self.label}: a {self.size}x{self.size} window "
                             f"does not fit input {in_shape}")
        return (c, (h - self.size) // self.stride + 1,
                (w - self.size) // self.stride + 1)

    def forward(self, x, phase):
        return phase.lib.pool2d(x, self.size, self.stride, self.mode,
                                self.in_shape)


class MaxPool2D(_Pool2D):
    """Maximum over ``size x size`` windows, ``stride`` apart (default
    ``size``), without padding: output side ``(H - size) // stride + 1``.

    Args:
        size: window side.
        stride: step between windows (default ``size``: no overlap).
        name: see :class:`Layer`.
    """

    mode = "max"


class AvgPool2D(_Pool2D):
    """Mean over ``size x size`` windows, ``stride`` apart (default
    ``size``), without padding: output side ``(H - size) // stride + 1``.

    Args:
        size: window side.
        stride: step between windows (default ``size``).
        name: see :class:`Layer`.
    """

    mode = "average"


class GlobalAvgPool(Layer):
    """Mean over the spatial axes: ``(C, H, W) -> (C,)``.

    Args:
        name: see :class:`Layer`.
    """

    def _build(self, in_shape, builder):
        if len(in_shape) != 3:
            raise ValueError(
                f"{self.label} takes (channels, height, width) inputs, got "
                f"shape {in_shape}")
        return (in_shape[0],)

    def forward(self, x, phase):
        return x.mean(axis=(2, 3))


class BatchNorm(Layer):
    """Batch normalisation (Ioffe & Szegedy 2015) over the channel axis.

    ``y = gamma (x - mean) / sqrt(var + epsilon) + beta`` per channel (per
    feature for flat inputs). Training uses the batch's mean and (biased)
    variance and moves the running averages
    ``r <- (1 - momentum) r + momentum * batch``; inference uses the running
    averages. Each rank keeps its own running averages; rules that
    exchange parameters average them with the parameters.

    Args:
        momentum: the running averages' rate, in (0, 1].
        epsilon: added to the variance.
        name: see :class:`Layer`.

    Attributes:
        gamma, beta: the scale and shift (trainable).
        mean, var: the running statistics (:attr:`Layer.state`).
    """

    def __init__(self, *, momentum=0.1, epsilon=1e-5, name=None):
        super().__init__(name=name)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum={momentum!r} must lie in (0, 1]")
        if not epsilon > 0:
            raise ValueError(f"epsilon={epsilon!r} must be > 0")
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def _build(self, in_shape, builder):
        if len(in_shape) not in (1, 3):
            raise ValueError(
                f"{self.label} takes (features,) or (channels, height, "
                f"width) inputs, got shape {in_shape}")
        shape = (in_shape[0],)
        self.gamma = self._add_param(
            builder.variable(self, "gamma", 1.0, shape))
        self.beta = self._add_param(builder.variable(self, "beta", 0.0, shape))
        self.mean = self._add_state(builder.variable(self, "mean", 0.0, shape))
        self.var = self._add_state(builder.variable(self, "var", 1.0, shape))
        return in_shape

    def forward(self, x, phase):
        T = phase.lib.T
        image = len(self.in_shape) == 3
        axes = (0, 2, 3) if image else (0,)
        if phase.training:
            mean, var = x.mean(axis=axes), x.var(axis=axes)
            m = self.momentum
            phase.add_update(self.mean, (1 - m) * self.mean + m * mean)
            phase.add_update(self.var, (1 - m) * self.var + m * var)
        else:
            mean, var = self.mean, self.var
        scale = self.gamma / T.sqrt(var + self.epsilon)
        shift = self.beta - mean * scale

        def channel(v):
            return v.dimshuffle("x", 0, "x", "x") if image else v
        return x * channel(scale) + channel(shift)


class Dropout(Layer):
    """Inverted dropout (Srivastava et al. 2014): in training each input is
    zeroed with probability ``p`` and the rest scaled by ``1 / (1 - p)``;
    at inference the identity.

    Args:
        p: drop probability, in [0, 1).
        name: see :class:`Layer`.
    """

    def __init__(self, p=0.5, *, name=None):
        super().__init__(name=name)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p={p!r} must lie in [0, 1)")
        self.p = float(p)

    def forward(self, x, phase):
        if not phase.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        u = phase.uniform(x.shape, who=self.label)
        return x * phase.lib.T.cast(u < keep, x.dtype) / keep


class ReLU(Layer):
    """``y = max(x, 0)``.

    Args:
        name: see :class:`Layer`.
    """

    def forward(self, x, phase):
        return phase.lib.T.maximum(x, 0)


class Sequential(Layer):
    """Layers applied in order; each one's output shape is the next one's
    input shape.

    Args:
        layers: the layers.
        name: see :class:`Layer`; unnamed children are named by class and
            position (``conv2d0``, ``batchnorm1``).
    """

    def __init__(self, layers, *, name=None):
        super().__init__(name=name)
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise ValueError(f"layers[{i}] is a {type(layer).__name__}, "
                                 "not a tmpi_layers Layer")
        if not self.layers:
            raise ValueError("Sequential needs at least one layer")

    def children(self):
        return list(self.layers)

    def _build(self, in_shape, builder):
        shape = in_shape
        for i, layer in enumerate(self.layers):
            if layer.name is None:
                layer.path = f"{type(layer).__name__.lower()}{i}"
                layer.name = layer.path
            shape = layer.build(shape, builder, prefix=self._prefix())
        return shape

    def _prefix(self):
        return f"{self.path}." if self.path else ""

    def forward(self, x, phase):
        for layer in self.layers:
            x = layer(x, phase)
        return x


class Residual(Layer):
    """``y = act(branch(x) + shortcut(x))`` (He et al. 2016); the shortcut
    is the identity when None.

    Args:
        branch: the residual branch (a layer, e.g. a :class:`Sequential`).
        shortcut: a projection (e.g. a 1x1 :class:`Conv2D` and
            :class:`BatchNorm`) when the branch changes the shape, or None.
        activation: None or ``'relu'``, after the sum.
        name: see :class:`Layer`.

    Raises:
        ValueError: at build time, naming the layer and both shapes, when
            branch and shortcut give different shapes.
    """

    def __init__(self, branch, shortcut=None, *, activation="relu",
                 name=None):
        super().__init__(name=name)
        for what, layer in (("branch", branch), ("shortcut", shortcut)):
            if layer is not None and not isinstance(layer, Layer):
                raise ValueError(f"{what} is a {type(layer).__name__}, not a "
                                 "tmpi_layers Layer")
        self.branch, self.shortcut = branch, shortcut
        self.activation = _activation(activation, "Residual")

    def children(self):
        return [self.branch] + ([self.shortcut] if self.shortcut else [])

    def _build(self, in_shape, builder):
        prefix = f"{self.path}."
        if self.branch.name is None:
            self.branch.name = "branch"
        out = self.branch.build(in_shape, builder, prefix=prefix)
        short = in_shape
        if self.shortcut is not None:
            if self.shortcut.name is None:
                self.shortcut.name = "shortcut"
            short = self.shortcut.build(in_shape, builder, prefix=prefix)
        if tuple(out) != tuple(short):
            raise ValueError(
                f"{self.label}: the branch gives shape {tuple(out)}, the "
                f"shortcut {tuple(short)}; they must match (give a "
                "projection shortcut when the branch changes the shape)")
        return out

    def forward(self, x, phase):
        s = x if self.shortcut is None else self.shortcut(x, phase)
        return _apply_activation(self.activation,
                                 self.branch(x, phase) + s, phase.lib.T)
