"""Data and serial replay for the uneven-data tests (tests/test_uneven.py).

Linear regression, ``loss = mean((x w - y)^2)``: its gradient has a closed
form, so the replay needs no framework.
"""

import numpy as np

DIM, BATCH = 5, 4


def batches_of(rank, count):
    """Rank ``rank``'s ``count`` batches ``(x, y)``, float32."""
    rng = np.random.default_rng(100 + rank)
    true_w = np.arange(1, DIM + 1, dtype=np.float64)[:, None] / DIM
    out = []
    for _ in range(count):
        x = rng.normal(size=(BATCH, DIM))
        y = x @ true_w + 0.1 * rng.normal(size=(BATCH, 1))
        out.append((x.astype(np.float32), y.astype(np.float32)))
    return out


def initial_weights(rank):
    """Different on every rank: the rule broadcasts rank 0's."""
    return np.full((DIM, 1), 0.1 * (rank + 1), np.float32)


def replay(counts, epochs, lr):
    """BSP on gradients, serially: at step t the average is over the ranks
    that still have a batch, ``(1/c) sum g_i``, applied by every rank."""
    data = [batches_of(r, n) for r, n in enumerate(counts)]
    w = initial_weights(0).astype(np.float64)
    for _ in range(epochs):
        for t in range(max(counts)):
            grads = [2.0 * x.T @ (x @ w - y) / len(y)
                     for x, y in (d[t] for d in data if t < len(d))]
            w = w - lr * np.mean(grads, axis=0)
    return w
