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
    if backend_name() == "torch":
        import torch

        torch.set_num_threads(int(n))


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
        v.assign(np.asarray(a, dtype=v.dtype))


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


def install_gradient_hook(optimizer, on_gradients):
    """Make ``optimizer.apply`` pass gradients through ``on_gradients`` first.

    ``on_gradients`` maps a list of numpy arrays (``None`` for missing
    gradients) to a list of averaged arrays, or to ``None`` to skip this
    update (BSP's ``nonfinite='skip'``). Returns a function that removes the
    hook.
    """
    original = optimizer.apply
    zeros = {}

    def apply(grads, trainable_variables=None):
        grads = list(grads)
        arrays = [tensor_to_numpy(g) for g in grads]
        if any(a is None for a in arrays):
            # A variable the loss does not reach: exchange zeros so every
            # rank packs the same layout, and keep it None for Keras to skip.
            variables = (list(trainable_variables) if trainable_variables
                         is not None else optimizer._trainable_variables)
            for i, a in enumerate(arrays):
                if a is None:
                    if i not in zeros:
                        zeros[i] = np.zeros(variables[i].shape, np.float32)
                    arrays[i] = zeros[i]
        averaged = on_gradients(arrays)
        if averaged is None:
            return None         # the rule skipped this step on every rank
        new = [numpy_to_tensor(a, g) for a, g in zip(averaged, grads)]
        return original(new, trainable_variables)

    # Keras optimizers track attributes set through __setattr__; the hook is
    # plain behaviour, not state, so bypass tracking (and remove it later).
    object.__setattr__(optimizer, "apply", apply)

    def remove():
        optimizer.__dict__.pop("apply", None)

    return remove


def _is_float(dtype):
    return "float" in str(dtype)
