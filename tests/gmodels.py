"""A small classifier in Theano+Lasagne or in PyTensor, with its update
rules, shared by the MPI scripts and the single-process references."""

import numpy as np

OPTIMIZERS = ("momentum", "nesterov", "adam")


def graph_modules(lib):
    """``(lib_module, tensor_module)`` for ``'theano'`` or ``'pytensor'``."""
    if lib == "theano":
        import theano
        import theano.tensor as T

        return theano, T
    import pytensor
    import pytensor.tensor as pt

    return pytensor, pt


def build(lib, optimizer, seed, *, entry=None, dist=None, rule="bsp",
          options=None):
    """Compile ``train(x, y) -> loss``; return ``(train, params)``.

    Args:
        lib: ``'theano'`` (a Lasagne network and Lasagne's update rules) or
            ``'pytensor'`` (the same network and rules written out).
        optimizer: ``'momentum'``, ``'nesterov'`` or ``'adam'``.
        seed: initial weights depend only on this.
        entry: ``None`` (no tmpi), ``'grads'`` (``dist.distributed_grads``)
            or ``'updates'`` (``dist.distributed``).
        dist: the tmpi adapter module.
        rule, options: the tmpi rule and its options for ``'updates'``.
    """
    mod, T = graph_modules(lib)
    x, y = T.matrix("x"), T.ivector("y")
    if lib == "theano":
        import lasagne

        lasagne.random.set_rng(np.random.RandomState(seed))
        net = lasagne.layers.InputLayer((None, 6), input_var=x)
        net = lasagne.layers.DenseLayer(net, 16, nonlinearity=T.tanh)
        net = lasagne.layers.DenseLayer(net, 3, nonlinearity=T.nnet.softmax)
        params = lasagne.layers.get_all_params(net, trainable=True)
        probs = lasagne.layers.get_output(net)
        loss = lasagne.objectives.categorical_crossentropy(probs, y).mean()
        rules = {"momentum": lambda g, p: lasagne.updates.momentum(g, p, 0.05),
                 "nesterov": lambda g, p: lasagne.updates.nesterov_momentum(
                     g, p, 0.05),
                 "adam": lambda g, p: lasagne.updates.adam(g, p, 0.01)}
    else:
        rs = np.random.RandomState(seed)
        floatx = mod.config.floatX
        params = [mod.shared(rs.normal(0, 0.5, s).astype(floatx), name=n)
                  for n, s in (("W1", (6, 16)), ("b1", (16,)),
                               ("W2", (16, 3)), ("b2", (3,)))]
        w1, b1, w2, b2 = params
        probs = T.special.softmax(T.dot(T.tanh(T.dot(x, w1) + b1), w2) + b2,
                                  axis=-1)
        loss = -T.mean(T.log(probs[T.arange(y.shape[0]), y]))
        rules = {"momentum": lambda g, p: _momentum(mod, g, p, 0.05, False),
                 "nesterov": lambda g, p: _momentum(mod, g, p, 0.05, True),
                 "adam": lambda g, p: _adam(mod, T, g, p, 0.01)}
    grads = T.grad(loss, params)
    if entry == "grads":
        grads = dist.distributed_grads(grads, params=params)
    updates = rules[optimizer](grads, params)
    if entry == "updates":
        updates = dist.distributed(updates, rule, **(options or {}))
    train = mod.function([x, y], loss, updates=updates)
    return train, params, updates


def _momentum(mod, grads, params, lr, nesterov, mu=0.9):
    updates = []
    for p, g in zip(params, grads):
        v = mod.shared(np.zeros_like(p.get_value()))
        v_new = mu * v - lr * g
        updates.append((v, v_new))
        updates.append((p, p + (mu * v_new - lr * g if nesterov else v_new)))
    return updates


def _adam(mod, T, grads, params, lr, b1=0.9, b2=0.999, eps=1e-8):
    t = mod.shared(np.asarray(0.0, dtype=mod.config.floatX))
    t_new = t + 1
    a = lr * T.sqrt(1 - b2 ** t_new) / (1 - b1 ** t_new)
    updates = [(t, t_new)]
    for p, g in zip(params, grads):
        m = mod.shared(np.zeros_like(p.get_value()))
        v = mod.shared(np.zeros_like(p.get_value()))
        m_new = b1 * m + (1 - b1) * g
        v_new = b2 * v + (1 - b2) * g ** 2
        updates += [(m, m_new), (v, v_new),
                    (p, p - a * m_new / (T.sqrt(v_new) + eps))]
    return updates
