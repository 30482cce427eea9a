"""A ResNet trained data-parallel in a plain PyTorch loop with ``tmpi_torch``.

Launch (2 ranks, bundled digits, well under a minute)::

    mpiexec -n 2 python zoo/torch_resnet.py
    mpiexec -n 4 python zoo/torch_resnet.py --data cifar10 \\
        --data-dir ~/data/cifar-10-batches-py --width 32 --epochs 30
    python zoo/torch_resnet.py --help

A pre-activation ResNet (He et al. 2016) of three stages of ``--blocks``
basic blocks, widths ``w, 2w, 4w``. Each rank trains on its equal shard
(:func:`tmpi_adapters.torch.shard_loader`); gradients are averaged bucket
by bucket while backward runs when the ranks span hosts (``--overlap
on|off`` to choose). Rank 0
prints the global loss and accuracy per epoch and a final line with test
accuracy and samples/s. ``--checkpoint DIR`` resumes from and writes to
``DIR`` every epoch.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import tmpi_adapters.torch as tmpi_torch  # noqa: E402
from tmpi_core import load_dataset, shard  # noqa: E402


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, with an identity (or 1x1 conv) shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (None if stride == 1 and cin == cout else
                         nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        h = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(h)
        h = self.conv1(h)
        h = self.conv2(torch.relu(self.bn2(h)))
        return h + skip


def resnet(channels, classes, *, width=16, blocks=1):
    """Build the pre-activation ResNet.

    Args:
        channels: input channels.
        classes: output classes.
        width: channels of the first stage (then 2x, 4x).
        blocks: basic blocks per stage.

    Returns:
        ``torch.nn.Module`` producing logits.
    """
    layers = [nn.Conv2d(channels, width, 3, 1, 1, bias=False)]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for b in range(blocks):
            layers.append(PreActBlock(cin, cout,
                                      2 if stage and b == 0 else 1))
            cin = cout
    layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--blocks", type=int, default=1, help="blocks per stage")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--rule", default="bsp", help="tmpi rule (default bsp)")
    p.add_argument("--overlap", choices=["auto", "on", "off"],
                   default="auto",
                   help="bsp: exchange buckets during backward (auto: when "
                        "the ranks span several hosts)")
    p.add_argument("--bucket-mb", type=float, default=tmpi_torch.BUCKET_MB)
    p.add_argument("--data", choices=["digits", "cifar10", "mnist"],
                   default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--checkpoint", default=None, help="checkpoint directory")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("width", "blocks", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must "
                    "be >= 1")
    if args.rule != "bsp" and args.overlap != "auto":
        p.error("--overlap is an option of the bsp rule")
    return args


def evaluate(model, x, y, ctx, batch=256):
    """Global (all ranks) loss and accuracy of ``model`` on the shards."""
    model.eval()
    totals = np.zeros(3)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb, yb = torch.from_numpy(x[i:i + batch]), torch.from_numpy(
                y[i:i + batch])
            logits = model(xb)
            totals += [float(loss_fn(logits, yb)),
                       float((logits.argmax(1) == yb).sum()), len(yb)]
    ctx.allreduce_sum(totals)
    model.train()
    return totals[0] / totals[2], totals[1] / totals[2]


def main(argv=None):
    args = parse_args(argv)
    try:
        (x_tr, y_tr), (x_te, y_te) = load_dataset(args.data, args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    x_tr, x_te = (np.ascontiguousarray(a.transpose(0, 3, 1, 2))
                  for a in (x_tr, x_te))          # NHWC -> NCHW
    y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
    classes = int(max(y_tr.max(), y_te.max())) + 1
    torch.manual_seed(args.seed)
    model = resnet(x_tr.shape[1], classes, width=args.width,
                   blocks=args.blocks)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                                nesterov=True, weight_decay=5e-4)
    options = {"overlap": {"auto": None, "on": True, "off": False}[
        args.overlap], "bucket_mb": args.bucket_mb} \
        if args.rule == "bsp" else {}
    sync = tmpi_torch.distributed(model, optimizer, args.rule,
                                  checkpoint=args.checkpoint, **options)
    ctx = sync.rule.context
    x_te, y_te = shard((x_te, y_te), ctx.rank, ctx.size)
    data = torch.utils.data.TensorDataset(torch.from_numpy(x_tr),
                                          torch.from_numpy(y_tr))
    loader = tmpi_torch.shard_loader(data, batch_size=args.batch_size,
                                     shuffle=True, seed=args.seed)
    start_epoch = sync.restore() if args.checkpoint else 0
    if ctx.rank == 0:
        params = sum(p.numel() for p in model.parameters())
        print(f"resnet: {params:,} parameters, {ctx.size} rank(s) x batch "
              f"{args.batch_size}, {len(loader)} steps per epoch, "
              f"{torch.get_num_threads()} thread(s) per rank"
              + (f", resumed at epoch {start_epoch}" if start_epoch else ""),
              flush=True)
    loss_fn = nn.CrossEntropyLoss()
    training = not sync.serve()             # asynchronous EASGD's server
    ctx.barrier()
    start = time.perf_counter()
    for epoch in range(start_epoch, args.epochs if training else 0):
        loader.sampler.set_epoch(epoch)
        for xb, yb in loader:
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
        if sync.rule.role == "peer":
            loss, acc = evaluate(model, x_te, y_te, ctx)
            if args.checkpoint:
                sync.save(epoch=epoch + 1)
            if ctx.rank == 0:
                print(f"epoch {epoch + 1}/{args.epochs}: test_loss="
                      f"{loss:.4f} test_accuracy={acc:.4f}", flush=True)
    elapsed = time.perf_counter() - start
    sync.finalize()
    loss, acc = evaluate(model, x_te, y_te, ctx)
    if ctx.rank == 0:
        samples = len(loader.sampler) * ctx.size * (args.epochs - start_epoch)
        print(f"final: test_accuracy={acc:.4f} test_loss={loss:.4f} "
              f"samples/s={samples / max(elapsed, 1e-9):.1f} "
              f"ranks={ctx.size} wall_s={elapsed:.1f}", flush=True)
    return acc


if __name__ == "__main__":
    main()
