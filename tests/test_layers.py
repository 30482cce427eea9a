"""tmpi_layers: every layer's output and gradient against a numpy reference,
on PyTensor (.venv) and Theano (.venv-theano); bad input named.

Gradients: the compiled gradient of ``sum(y * R)`` (``R`` fixed random)
with respect to the input and every parameter, against central differences
of the numpy reference.
"""

import numpy as np
import pytest

LIBS = ["pytensor", "theano"]


def _lib(name):
    """The backend, or a skip with the reason where ``name`` is absent."""
    if name == "theano":
        pytest.importorskip(
            "theano", reason="Theano is tested in .venv-theano "
            "(numpy < 1.24); `make test` runs this file there too")
    else:
        pytest.importorskip(
            "pytensor", reason="PyTensor is tested in .venv (numpy 2); "
            "`make test` runs this file there too")
    import tmpi_layers

    return tmpi_layers.backend(name)


# -- numpy references ---------------------------------------------------------

def np_dense(x, W, b, relu=False):
    y = x.reshape(len(x), -1) @ W + b
    return np.maximum(y, 0) if relu else y


def np_conv(x, W, b, stride=1, pad=0):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, w = x.shape
    f, _, k, _ = W.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    y = np.zeros((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + k,
                      j * stride:j * stride + k]
            y[:, :, i, j] = np.tensordot(patch, W, axes=([1, 2, 3], [1, 2, 3]))
    return y + (0 if b is None else b[None, :, None, None])


def np_pool(x, size, stride, reduce):
    n, c, h, w = x.shape
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = x[:, :, i * stride:i * stride + size,
                       j * stride:j * stride + size]
            y[:, :, i, j] = reduce(window, axis=(2, 3))
    return y


def np_batchnorm(x, gamma, beta, eps, mean=None, var=None):
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    if mean is None:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
    return ((x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
            * gamma.reshape(shape) + beta.reshape(shape))


def np_log_softmax(z):
    s = z - z.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def numeric_grad(f, arrays, k, eps=1e-6):
    """Central differences of scalar ``f(*arrays)`` in ``arrays[k]``."""
    a = arrays[k]
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + eps
        up = f(*arrays)
        a[idx] = old - eps
        down = f(*arrays)
        a[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


def check_layer(lib, layer, in_shape, reference, *, batch=3, training=True,
                seed=0):
    """Build ``layer``, compile its output and gradients, compare with
    ``reference(x, *param_values)`` and its central differences."""
    import tmpi_layers as L

    rs = np.random.RandomState(seed)
    layer.build(in_shape, L.Builder(lib, rs, "float64"))
    x = lib.input(1 + len(in_shape), "x")
    phase = L.Phase(lib, training=training)
    y = layer(x, phase)
    R = rs.normal(size=(batch,) + layer.out_shape)
    cost = (y * R).sum()
    fn = lib.function([x], [y] + lib.grad(cost, [x] + layer.params))
    xv = rs.normal(size=(batch,) + tuple(in_shape))
    got = fn(xv)
    arrays = [xv] + [p.get_value() for p in layer.params]
    want = reference(*arrays)
    assert got[0].shape == (batch,) + layer.out_shape
    np.testing.assert_allclose(got[0], want, rtol=1e-7, atol=1e-9)

    def total(*a):
        return float((reference(*a) * R).sum())
    names = ["x"] + [p.name for p in layer.params]
    for k, (name, g) in enumerate(zip(names, got[1:])):
        np.testing.assert_allclose(g, numeric_grad(total, arrays, k),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    return layer, phase


# -- layers -------------------------------------------------------------------

@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_dense(lib, activation):
    import tmpi_layers as L

    lib = _lib(lib)
    layer, _ = check_layer(
        lib, L.Dense(4, activation=activation, name="fc"), (2, 3),
        lambda x, W, b: np_dense(x, W, b, activation == "relu"))
    assert [p.name for p in layer.params] == ["fc.W", "fc.b"]
    assert layer.decayed == [layer.W]


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("size,stride,pad,bias", [
    (3, 1, 1, True), (3, 2, 0, False), (1, 2, 0, True), (5, 1, "same", True)])
def test_conv2d(lib, size, stride, pad, bias):
    import tmpi_layers as L

    lib = _lib(lib)
    p = size // 2 if pad == "same" else pad
    layer = L.Conv2D(3, size, stride=stride, pad=pad,
                     b=0.0 if bias else None)
    if bias:
        check_layer(lib, layer, (2, 6, 5),
                    lambda x, W, b: np_conv(x, W, b, stride, p))
    else:
        check_layer(lib, layer, (2, 6, 5),
                    lambda x, W: np_conv(x, W, None, stride, p))
    assert layer.out_shape == ((3,) + tuple((s + 2 * p - size) // stride + 1
                                            for s in (6, 5)))


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("size,stride", [(2, 2), (3, 2)])
def test_pooling(lib, kind, size, stride):
    import tmpi_layers as L

    lib = _lib(lib)
    cls, reduce = (L.MaxPool2D, np.max) if kind == "max" else \
        (L.AvgPool2D, np.mean)
    layer, _ = check_layer(lib, cls(size, stride), (2, 7, 6),
                           lambda x: np_pool(x, size, stride, reduce))
    assert layer.out_shape == (2, (7 - size) // stride + 1,
                               (6 - size) // stride + 1)


@pytest.mark.parametrize("lib", LIBS)
def test_global_avg_pool_and_relu(lib):
    import tmpi_layers as L

    lib = _lib(lib)
    check_layer(lib, L.GlobalAvgPool(), (3, 4, 5),
                lambda x: x.mean(axis=(2, 3)))
    check_layer(lib, L.ReLU(), (3, 4), lambda x: np.maximum(x, 0))


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("in_shape", [(3, 4, 5), (6,)])
def test_batchnorm_training_and_inference(lib, in_shape):
    import tmpi_layers as L

    lib = _lib(lib)
    rs = np.random.RandomState(1)
    gamma = rs.uniform(0.5, 1.5, in_shape[:1])
    beta = rs.normal(size=in_shape[:1])
    xv = rs.normal(2.0, 3.0, size=(4,) + in_shape)
    R = rs.normal(size=(4,) + in_shape)
    axes = (0, 2, 3) if len(in_shape) == 3 else (0,)

    def run(training, mean=None, var=None):
        bn = L.BatchNorm(momentum=0.25, epsilon=1e-3, name="bn")
        bn.build(in_shape, L.Builder(lib, rs, "float64"))
        bn.gamma.set_value(gamma)
        bn.beta.set_value(beta)
        if mean is not None:
            bn.mean.set_value(mean)
            bn.var.set_value(var)
        x = lib.input(1 + len(in_shape), "x")
        phase = L.Phase(lib, training=training)
        y = bn(x, phase)
        fn = lib.function([x], [y] + lib.grad((y * R).sum(),
                                              [x, bn.gamma, bn.beta]),
                          updates=phase.updates)
        got = fn(xv)

        def ref(x, g, b):
            return np_batchnorm(x, g, b, 1e-3, mean, var)
        np.testing.assert_allclose(got[0], ref(xv, gamma, beta), rtol=1e-7,
                                   atol=1e-9)
        arrays = [xv.copy(), gamma.copy(), beta.copy()]
        for k in range(3):
            np.testing.assert_allclose(
                got[1 + k], numeric_grad(lambda *a: float((ref(*a) * R).sum()),
                                         arrays, k), rtol=1e-5, atol=1e-6)
        return bn, phase

    # training: the batch's statistics, and the running averages move by
    # one step, r <- 0.75 r + 0.25 batch
    bn, phase = run(True)
    np.testing.assert_allclose(bn.mean.get_value(),
                               0.25 * xv.mean(axis=axes), rtol=1e-10)
    np.testing.assert_allclose(bn.var.get_value(),
                               0.75 + 0.25 * xv.var(axis=axes), rtol=1e-10)
    assert bn.state == [bn.mean, bn.var] and bn.params == [bn.gamma, bn.beta]
    # inference: the running averages, nothing updated
    mean, var = rs.normal(size=in_shape[:1]), rs.uniform(1, 2, in_shape[:1])
    bn, phase = run(False, mean, var)
    assert phase.updates == []
    np.testing.assert_array_equal(bn.mean.get_value(), mean)


@pytest.mark.parametrize("lib", LIBS)
def test_dropout(lib):
    import tmpi_layers as L

    lib = _lib(lib)
    layer = L.Dropout(0.25)
    layer.build((50, 40), L.Builder(lib, np.random.RandomState(0)))
    x = lib.input(3, "x")
    # inference: the identity
    assert layer(x, L.Phase(lib, training=False)) is x
    phase = L.Phase(lib, training=True, streams=lib.random_streams(3))
    y = layer(x, phase)
    fn = lib.function([x], [y, lib.grad(y.sum(), x)], updates=phase.updates)
    xv = np.random.RandomState(0).uniform(1, 2, (2, 50, 40))
    y1, g1 = fn(xv)
    y2, _ = fn(xv)
    kept = y1 != 0
    # kept inputs scaled by 1/(1-p), a quarter dropped, the gradient the
    # mask over (1-p); a new mask at the next call
    np.testing.assert_allclose(y1[kept], xv[kept] / 0.75, rtol=1e-12)
    assert abs(1 - kept.mean() - 0.25) < 0.03, kept.mean()
    np.testing.assert_allclose(g1, kept / 0.75, rtol=1e-12)
    assert (y2 != 0).tolist() != kept.tolist()


@pytest.mark.parametrize("lib", LIBS)
def test_softmax_and_cross_entropy(lib):
    import tmpi_layers as L

    lib = _lib(lib)
    T = lib.T
    z, y = lib.input(2, "z"), T.ivector("y")
    loss = L.losses.cross_entropy(z, y, T)
    fn = lib.function([z, y], [L.losses.softmax(z, T), loss,
                               L.losses.accuracy(z, y, T, "float64"),
                               lib.grad(loss, z)])
    rs = np.random.RandomState(0)
    zv = rs.normal(size=(5, 4)) * 3
    zv[0, 1] = 800.0                         # no overflow
    yv = np.array([1, 0, 3, 2, 2], np.int32)
    probs, got_loss, acc, grad = fn(zv, yv)

    def ref(z):
        return -np_log_softmax(z)[np.arange(5), yv].mean()
    np.testing.assert_allclose(probs, np.exp(np_log_softmax(zv)), rtol=1e-12)
    np.testing.assert_allclose(got_loss, ref(zv), rtol=1e-12)
    assert acc == np.mean(zv.argmax(1) == yv)
    zv[0, 1] = 5.0                           # differences away from 800
    _, _, _, grad = fn(zv, yv)
    np.testing.assert_allclose(grad, numeric_grad(ref, [zv], 0), rtol=1e-6,
                               atol=1e-8)


@pytest.mark.parametrize("lib", LIBS)
def test_sequential_and_residual(lib):
    import tmpi_layers as L

    lib = _lib(lib)
    block = L.Residual(L.Sequential([L.Conv2D(2, 3, pad=1), L.ReLU(),
                                     L.Conv2D(2, 1)]),
                       name="block")
    layer, _ = check_layer(
        lib, block, (2, 4, 4),
        lambda x, W1, b1, W2, b2: np.maximum(
            np_conv(np.maximum(np_conv(x, W1, b1, 1, 1), 0), W2, b2) + x, 0))
    assert [p.name for p in layer.params] == [
        "block.branch.conv2d0.W", "block.branch.conv2d0.b",
        "block.branch.conv2d2.W", "block.branch.conv2d2.b"]


def test_initialisers_have_their_scale():
    from tmpi_layers import init

    rs = np.random.RandomState(0)
    w = init.he_normal((400, 300), 400, 300, rs)
    assert abs(w.std() - np.sqrt(2 / 400)) < 0.002 and abs(w.mean()) < 0.002
    w = init.glorot_uniform((400, 300), 400, 300, rs)
    a = np.sqrt(6 / 700)
    assert w.max() <= a and w.min() >= -a and abs(w.std() - a / np.sqrt(3)) \
        < 0.002
    assert (init.constant(0.5)((2, 3), 1, 1, rs) == 0.5).all()
    assert (init.zeros((2,), 1, 1, rs) == 0).all()
    with pytest.raises(ValueError, match=r"fc\.W: initial value has shape "
                                         r"\(2,\), the layer needs \(3, 4\)"):
        init.resolve(np.zeros(2), (3, 4), 3, 4, rs, what="fc.W")


# -- bad input ----------------------------------------------------------------

@pytest.mark.parametrize("lib", LIBS)
def test_bad_shapes_name_the_layer_and_the_shapes(lib):
    import tmpi_layers as L

    lib = _lib(lib)

    def build(layer, shape):
        return layer.build(shape, L.Builder(lib, np.random.RandomState(0)))
    with pytest.raises(ValueError, match=r"Conv2D 'c1' takes \(channels, "
                                         r"height, width\) inputs, got shape "
                                         r"\(10,\)"):
        build(L.Conv2D(4, 3, name="c1"), (10,))
    with pytest.raises(ValueError, match=r"MaxPool2D 'net\.pool': a 3x3 "
                                         r"window does not fit input "
                                         r"\(1, 2, 2\)"):
        build(L.Sequential([L.MaxPool2D(3, name="pool")], name="net"),
              (1, 2, 2))
    with pytest.raises(ValueError, match=r"Residual 'b': the branch gives "
                                         r"shape \(4, 4, 4\), the shortcut "
                                         r"\(2, 4, 4\)"):
        build(L.Residual(L.Conv2D(4, 1), name="b"), (2, 4, 4))
    layer = L.Dense(3)
    build(layer, (4,))
    with pytest.raises(ValueError, match="already built"):
        build(layer, (4,))
    with pytest.raises(ValueError, match="pad='same' needs an odd size"):
        L.Conv2D(2, 2, pad="same")
    with pytest.raises(ValueError, match=r"p=1\.0 must lie in \[0, 1\)"):
        L.Dropout(1.0)
    with pytest.raises(ValueError, match="activation='tanh' is unknown"):
        L.Dense(2, activation="tanh")
    with pytest.raises(ValueError, match="lib='jax' is unknown"):
        L.backend("jax")
    model = L.Model(L.Sequential([L.Dense(3)]), (4,), lib=lib, name="tiny")
    with pytest.raises(ValueError, match=r"tiny: inputs of shape \(2, 5\); "
                                         r"the model takes \(batch, 4\)"):
        model.check_batch(np.zeros((2, 5)), np.zeros(2))
    with pytest.raises(ValueError, match=r"tiny: targets range over \[0, 3\]; "
                                         "the model has 3 classes"):
        model.check_batch(np.zeros((2, 4)), np.array([0, 3]))
    with pytest.raises(ValueError, match="must end in \\(classes,\\) logits"):
        L.Model(L.Sequential([L.Conv2D(2, 1)]), (1, 4, 4), lib=lib)


@pytest.mark.parametrize("lib", LIBS)
def test_alexnet_and_resnet50_have_their_structure(lib):
    import tmpi_layers as L
    from tmpi_layers import models

    lib = _lib(lib)

    def walk(layer):
        yield layer
        for child in layer.children():
            yield from walk(child)
    model = L.Model(models.resnet50(10, width=2), (3, 32, 32), lib=lib)
    layers = list(walk(model.net))
    convs = [la for la in layers if isinstance(la, L.Conv2D)]
    blocks = [la for la in layers if isinstance(la, L.Residual)]
    # 49 convolutions and the dense layer on the main path (the "50"),
    # 4 projection shortcuts; bottlenecks [3, 4, 6, 3]
    assert len(convs) == 53 and len(blocks) == 16
    assert sum(la.path.endswith(".proj") for la in convs) == 4
    assert [b.out_shape for b in blocks if b.shortcut is not None] == [
        (8, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4)]
    assert model.classes == 10 and model.state
    model = L.Model(models.alexnet(10, width=1 / 16, batch_norm=False),
                    (3, 32, 32), lib=lib)
    convs = [la for la in walk(model.net) if isinstance(la, L.Conv2D)]
    assert [c.out_shape for c in convs] == [
        (6, 32, 32), (16, 15, 15), (24, 7, 7), (24, 7, 7), (16, 7, 7)]
    assert model.net.layers[-1].W.get_value().shape == (256, 10)
    assert not model.state
