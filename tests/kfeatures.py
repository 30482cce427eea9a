"""What tests/mpi/keras_features.py and its test both build: the
mixed-precision model and the sample that makes one step non-finite."""

N, B, EPOCHS, RANKS = 160, 8, 3, 2
#: the sample made ``inf``: in rank 1's shard, and in the 4th step's batch
#: of one process with the doubled batch
POISON = 3 * RANKS * B + B


def mixed_model(seed):
    """A ReLU MLP (an ``inf`` input gives ``nan`` gradients) with float32
    logits, for ``mixed_float16``."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)),
                             keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(3, dtype="float32")])
