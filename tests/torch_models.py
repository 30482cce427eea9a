"""The torch model, data and serial reference of tests/test_torch.py."""

import numpy as np
import torch

OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1),
    "momentum": lambda params: torch.optim.SGD(params, lr=0.05,
                                               momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
}


class Net(torch.nn.Module):
    """Batch norm (buffers), a layer used twice, a layer never used."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(6, 16)
        self.norm = torch.nn.BatchNorm1d(16)
        self.twice = torch.nn.Linear(16, 16)
        self.out = torch.nn.Linear(16, 3)
        self.unused = torch.nn.Linear(3, 3)

    def forward(self, x):
        h = torch.relu(self.norm(self.inp(x)))
        h = torch.relu(self.twice(h))
        h = torch.relu(self.twice(h))
        return self.out(h)


def make_model():
    return Net()


def batches(steps, batch, ranks, accumulate):
    """Per step, per rank, the micro-batches ``(x, y)`` it trains on:
    rank r's chunk of each global batch of ``ranks * batch`` rows."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(steps):
        micro = [[] for _ in range(ranks)]
        for _ in range(accumulate):
            x = rng.normal(size=(ranks * batch, 6)).astype(np.float32)
            y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
            for r in range(ranks):
                sl = slice(r * batch, (r + 1) * batch)
                micro[r].append((torch.from_numpy(x[sl]),
                                 torch.from_numpy(y[sl])))
        out.append(micro)
    return out


def reference(optimizer, steps, batch, ranks, accumulate):
    """One process, no tmpi: each step's global batch, its ``ranks``
    chunks through the model one by one (batch norm normalises each chunk,
    as each rank does), losses scaled so the gradient is their mean."""
    torch.manual_seed(100)                # rank 0's initial model
    model = make_model()
    opt = OPTIMIZERS[optimizer](model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    for micro in batches(steps, batch, ranks, accumulate):
        opt.zero_grad()
        for r in range(ranks):
            for x, y in micro[r]:
                (loss_fn(model(x), y) / (ranks * accumulate)).backward()
        opt.step()
    return [p.detach().numpy() for p in model.parameters()]
