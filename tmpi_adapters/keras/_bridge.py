"""Moving Keras variables and gradients to and from numpy, per backend."""

import functools

import numpy as np

__all__ = []


@functools.lru_cache(maxsize=None)
def backend_name():
    """Keras' backend name; fixed for the life of the process."""
    import keras

    return keras.backend.backend()


def set_framework_threads(n):
    """Limit the backend's own intra-op thread pool to ``n`` threads."""
    backend = backend_name()
    if backend == "torch":
        import torch

        torch.set_num_threads(int(n))
    elif backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(n))
        except RuntimeError:
            pass    # TF has started: its pool is sized (TF_NUM_INTRAOP_THREADS)
    # JAX: XLA sizes its pool when it starts; tmpi's start-up hook sets
    # XLA_FLAGS for one thread per rank (tmpi_core.threads)


def float_weights(model):
    """The model's floating-point weights (trainable first-class and
    non-trainable state such as batch-norm statistics), in model order."""
    return [v for v in model.weights if _is_float(v.dtype)]


def read(variables):
    """Current values of Keras variables as numpy arrays."""
    return [np.asarray(v.numpy()) for v in variables]


def write(variables, arrays):
    """Assign numpy arrays to Keras variables (cast to each one's dtype)."""
    for v, a in zip(variables, arrays):
        # a copy: JAX may alias a numpy array's memory, and the arrays may
        # be views of a rule's buffer (an MPI window, freed at close)
        v.assign(np.array(a, dtype=v.dtype))


def tensor_to_numpy(t):
    """A numpy view (torch CPU) or copy of a backend tensor."""
    if t is None:
        return None
    if backend_name() == "torch" and t.device.type == "cpu":
        return t.detach().numpy()
    import keras

    return keras.ops.convert_to_numpy(t)


def numpy_to_tensor(a, like):
    """A backend tensor with ``a``'s values and ``like``'s dtype/device."""
    if like is None:
        return None
    if backend_name() == "torch":
        import torch

        return torch.from_numpy(a).to(device=like.device, dtype=like.dtype)
    import keras

    return keras.ops.cast(keras.ops.convert_to_tensor(a), like.dtype)


def accumulators(optimizer):
    """The optimizer's gradient accumulators (``gradient_accumulation_steps``),
    in the order of its trainable variables (Keras keeps them by variable
    index)."""
    return [optimizer._accumulated_gradients[optimizer._get_variable_index(v)]
            for v in optimizer._trainable_variables]


def runs_eagerly(model):
    """True when the train step runs eagerly, so gradients are concrete
    tensors that can leave the graph for MPI."""
    if getattr(model, "run_eagerly", False):
        return True
    return backend_name() == "torch" and not getattr(model, "jit_compile", False)


def can_exchange_gradients(model):
    """True when :func:`install_gradient_hook` can reach the gradients of
    ``model``'s train step: eagerly on every backend; compiled on JAX (an
    ordered host callback inside the jitted step) and TensorFlow (a
    ``tf.numpy_function`` inside the ``tf.function``, not under XLA).
    torch's ``jit_compile=True`` (dynamo) is not supported."""
    if runs_eagerly(model):
        return True
    backend = backend_name()
    if backend == "jax":
        return True
    if backend == "tensorflow":
        return not getattr(model, "jit_compile", False)
    return False


def wait_for_step():
    """Block until the train steps dispatched so far have run their host
    callbacks (JAX dispatches asynchronously: the next callback must not
    run MPI while a step's gradient exchange still runs on XLA's thread)."""
    if backend_name() == "jax":
        import jax

        jax.effects_barrier()


def sync_model_state(model):
    """Put the train step's current state into the model's variables (JAX
    keeps it outside them during an epoch); a no-op elsewhere."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None and backend_name() == "jax":
        sync()


def install_gradient_hook(optimizer, on_gradients, *, accumulators=False):
    """Pass the gradients of every update through ``on_gradients`` first.

    ``on_gradients(grads, accumulated, iteration)`` gets numpy arrays
    (zeros for a variable the loss does not reach) and returns a list of
    arrays to apply instead, or ``None`` to skip this update (BSP's
    ``nonfinite='skip'``, the same on every rank). ``accumulated`` and
    ``iteration`` are the optimizer's gradient accumulators and its step
    counter when ``accumulators=True``, else ``None``. Under a
    ``LossScaleOptimizer`` the arrays are the unscaled gradients (the hook
    divides by the loss scale before and multiplies after: a power of two,
    so exact); a non-finite value on one rank reaches every rank through
    the sum, and the loss scaler then skips that step on every rank.

    Eager steps (torch, ``run_eagerly``) call it directly. Compiled steps
    call it from inside the graph: on JAX through an ordered
    ``jax.experimental.io_callback`` in ``stateless_apply`` (a skipped
    update is a ``lax.cond``), on TensorFlow through ``tf.numpy_function``
    in ``apply`` (a skipped update is a ``tf.cond``). One call per
    update, in program order on every rank, so the exchange's collectives
    match. Returns a function that removes the hook.
    """
    host = _HostExchange(optimizer, on_gradients, accumulators)
    backend = backend_name()
    if backend == "jax":
        name, hooked = "stateless_apply", _jax_stateless_apply(optimizer, host)
    else:
        name, hooked = "apply", _apply(optimizer, host, backend)
    # Keras optimizers track attributes set through __setattr__; the hook is
    # plain behaviour, not state, so bypass tracking (and remove it later).
    object.__setattr__(optimizer, name, hooked)

    def remove():
        optimizer.__dict__.pop(name, None)

    return remove


def loss_scaled(optimizer):
    """True for a ``keras.optimizers.LossScaleOptimizer``."""
    import keras

    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


class _HostExchange:
    """The numpy side of the gradient hook, shared by every backend.

    ``extra`` lists the optimizer variables whose current values the hook
    needs (gradient accumulators and step counter, the loss scale); each
    backend passes their values in that order.
    """

    def __init__(self, optimizer, on_gradients, with_accumulators):
        self.optimizer = optimizer
        self.on_gradients = on_gradients
        self.with_accumulators = with_accumulators
        self.scaled = loss_scaled(optimizer)
        self.shapes = self.extra = self.n_acc = None
        self.zeros = {}

    def prepare(self):
        """Read the optimizer's layout; at its first update (or trace), when
        it is built (TensorFlow builds it in its first ``apply``)."""
        if self.extra is not None:
            return
        optimizer = self.optimizer
        self.shapes = [tuple(v.shape) for v in optimizer._trainable_variables]
        extra = []
        if self.with_accumulators:
            acc = accumulators(optimizer)
            self.n_acc = len(acc)
            extra += acc + [optimizer._iterations]
        if self.scaled:
            extra.append(optimizer.dynamic_scale)
        self.extra = extra

    def __call__(self, arrays, extra_values):
        """``arrays``: numpy gradients, ``None`` where missing;
        ``extra_values``: the values of :attr:`extra`. Returns the arrays
        to apply and whether to apply them."""
        arrays = list(arrays)
        for i, a in enumerate(arrays):
            if a is None:
                # exchange zeros so every rank packs the same layout
                if i not in self.zeros:
                    self.zeros[i] = np.zeros(self.shapes[i], np.float32)
                arrays[i] = self.zeros[i]
        accumulated = iteration = None
        if self.n_acc is not None:
            accumulated = [np.asarray(a) for a in extra_values[:self.n_acc]]
            iteration = int(np.asarray(extra_values[self.n_acc]))
        if self.scaled:
            scale = np.asarray(extra_values[-1]).astype(np.float32)
            arrays = [a / scale for a in arrays]
        averaged = self.on_gradients(arrays, accumulated, iteration)
        if averaged is None:
            return arrays, False
        if self.scaled:
            averaged = [a * scale for a in averaged]
        return averaged, True


def _apply(optimizer, host, backend):
    # torch (eager) and TensorFlow (eager, or inside tf.function)
    original = optimizer.apply

    def apply(grads, trainable_variables=None):
        grads = list(grads)
        if trainable_variables is not None and not optimizer.built:
            optimizer.build(list(trainable_variables))
        host.prepare()
        if backend == "tensorflow" and not _tf_eager():
            return _tf_graph_apply(original, host, grads, trainable_variables)
        new, ok = host([tensor_to_numpy(g) for g in grads], read(host.extra))
        if not ok:
            return None             # the rule skipped this step on every rank
        # a gradient Keras got as None stays None (Keras skips it)
        new = [None if g is None else numpy_to_tensor(a, g)
               for a, g in zip(new, grads)]
        return original(new, trainable_variables)

    return apply


def _tf_eager():
    import tensorflow as tf

    return tf.executing_eagerly()


def _tf_graph_apply(original, host, grads, trainable_variables):
    import tensorflow as tf

    present = [i for i, g in enumerate(grads) if g is not None]
    dtypes = [grads[i].dtype for i in present]

    def run(*flat):
        arrays = [None] * len(grads)
        for i, a in zip(present, flat):
            arrays[i] = a
        new, ok = host(arrays, flat[len(present):])
        # copies: the results may be views of the exchange's buffer (an MPI
        # window with 'shm'), which TensorFlow must not alias
        out = [np.array(new[i], dtype=dtypes[k].as_numpy_dtype)
               for k, i in enumerate(present)]
        return out + [np.bool_(ok)]

    inputs = [tf.convert_to_tensor(grads[i]) for i in present]
    inputs += [v.value for v in host.extra]
    out = tf.numpy_function(run, inputs, dtypes + [tf.bool], stateful=True,
                            name="tmpi_gradient_exchange")
    new = list(grads)
    for k, i in enumerate(present):
        out[k].set_shape(grads[i].shape)
        new[i] = out[k]
    ok = tf.reshape(out[-1], [])

    def update():
        original(new, trainable_variables)
        return tf.constant(True)

    return tf.cond(ok, update, lambda: tf.constant(False))


def _jax_stateless_apply(optimizer, host):
    import jax
    from jax.experimental import io_callback

    original = optimizer.stateless_apply

    def stateless_apply(optimizer_variables, grads, trainable_variables):
        host.prepare()
        index = {id(v): k for k, v in enumerate(optimizer.variables)}
        where = [index[id(v)] for v in host.extra]
        grads = list(grads)
        present = [i for i, g in enumerate(grads) if g is not None]
        inputs = [grads[i] for i in present]
        inputs += [optimizer_variables[k] for k in where]
        specs = [jax.ShapeDtypeStruct(grads[i].shape, grads[i].dtype)
                 for i in present]

        def run(*flat):
            arrays = [None] * len(grads)
            for i, a in zip(present, flat):
                arrays[i] = np.asarray(a)
            new, ok = host(arrays, flat[len(present):])
            # copies: the results may be views of the exchange's buffer (an
            # MPI window with 'shm'), which XLA must not alias
            out = [np.array(new[i], dtype=specs[k].dtype)
                   for k, i in enumerate(present)]
            return out + [np.bool_(ok)]

        out = io_callback(run, specs + [jax.ShapeDtypeStruct((), np.bool_)],
                          *inputs, ordered=True)
        new = list(grads)
        for k, i in enumerate(present):
            new[i] = out[k]

        def update(operands):
            o, g, t = operands
            return tuple(map(list, original(o, g, t)))

        def skip(operands):
            o, _, t = operands
            return (list(t), list(o))

        return jax.lax.cond(out[-1], update, skip,
                            (list(optimizer_variables), new,
                             list(trainable_variables)))

    return stateless_apply


def _is_float(dtype):
    return "float" in str(dtype)
