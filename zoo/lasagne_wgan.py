"""Wasserstein GAN trained data-parallel with Theano/Lasagne and tmpi.

Launch (2 ranks, bundled digits, about two minutes on a laptop)::

    mpiexec -n 2 python zoo/lasagne_wgan.py
    mpiexec -n 4 python zoo/lasagne_wgan.py --epochs 40 --width 512 \\
        --out runs/wgan4
    python zoo/lasagne_wgan.py --help

Algorithm 1 of Arjovsky, Chintala & Bottou 2017, "Wasserstein GAN": the
critic ``f_w`` takes ``--n-critic`` RMSProp steps on
``-(mean f_w(x) - mean f_w(g(z)))`` per generator step on
``-mean f_w(g(z))``, and its weights are clipped to ``[-c, c]`` after every
update. Real data are scikit-learn's 8x8 digits, flattened to 64 values and
scaled to ``[-1, 1]`` to match the generator's ``tanh`` output; critic and
generator are small MLPs.

Both networks are trained with ``tmpi_lasagne.distributed_grads``: each call
of a compiled step function averages that network's gradients over the
ranks (one fused allreduce) before RMSProp, so every rank applies the same
update -- large-batch WGAN with batch ``ranks * --batch-size`` -- while it
draws its own noise (seed ``--seed + rank``) and its own shard of the
digits. Clipping is part of the same updates, so the ranks stay identical.

An "epoch" here is ``--iters-per-epoch`` generator iterations (the digits
shard is seen many times in one), after which rank 0 prints the critic's
Wasserstein estimate ``mean f(real) - mean f(fake)`` (each rank: its whole
shard against as many samples from fixed noise), averaged over the ranks,
and the real samples per second the critic consumed on all ranks. At the
end rank 0 writes a grid of samples (PNG) and a JSON history to ``--out``
and prints a final line; every rank checks that all ranks hold
bit-identical parameters.

Theano runs in float32 here: ``floatX=float32`` is appended to
``THEANO_FLAGS`` unless the flags already choose a ``floatX``.
"""

import argparse
import hashlib
import json
import os
import sys
import time

if "floatX" not in os.environ.get("THEANO_FLAGS", ""):
    os.environ["THEANO_FLAGS"] = ",".join(
        f for f in (os.environ.get("THEANO_FLAGS", ""), "floatX=float32") if f)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lasagne  # noqa: E402
import numpy as np  # noqa: E402
import theano  # noqa: E402
import theano.tensor as T  # noqa: E402

import tmpi_adapters.lasagne as tmpi_lasagne  # noqa: E402
from tmpi_core import get_context, load_digits, shard  # noqa: E402

PIXELS = 64  # 8x8 digits, flattened


def build_generator(noise_dim, width):
    """MLP generator ``z -> 64`` pixels in ``[-1, 1]``.

    Args:
        noise_dim: size of the noise vector ``z``.
        width: units of each of the two hidden ReLU layers.

    Returns:
        the output lasagne layer.
    """
    layer = lasagne.layers.InputLayer((None, noise_dim))
    for _ in range(2):
        layer = lasagne.layers.DenseLayer(
            layer, width, nonlinearity=lasagne.nonlinearities.rectify)
    return lasagne.layers.DenseLayer(layer, PIXELS,
                                     nonlinearity=lasagne.nonlinearities.tanh)


def build_critic(width):
    """MLP critic ``64 -> 1`` (no sigmoid: a critic, not a classifier).

    Args:
        width: units of each of the two hidden leaky-ReLU layers.

    Returns:
        the output lasagne layer.
    """
    leaky = lasagne.nonlinearities.LeakyRectify(0.2)
    layer = lasagne.layers.InputLayer((None, PIXELS))
    for _ in range(2):
        layer = lasagne.layers.DenseLayer(layer, width, nonlinearity=leaky)
    return lasagne.layers.DenseLayer(
        layer, 1, nonlinearity=lasagne.nonlinearities.linear)


def distributed_rmsprop(loss, params, args, *, clip=None):
    """RMSProp on gradients averaged over ranks, optionally clipping params.

    Args:
        loss: scalar symbolic loss.
        params: the shared variables to train.
        args: parsed flags (``lr``, ``rho``, ``eps``).
        clip: if given, every new parameter value is clipped to
            ``[-clip, clip]`` inside the same updates (the WGAN critic).

    Returns:
        OrderedDict of updates for ``theano.function``.
    """
    grads = tmpi_lasagne.distributed_grads(T.grad(loss, params),
                                           params=params)
    # Python floats: Theano casts them to floatX (a 0-d float32 numpy
    # array in `1 - rho` would make the update float64).
    updates = lasagne.updates.rmsprop(grads, params,
                                      learning_rate=float(args.lr),
                                      rho=float(args.rho),
                                      epsilon=float(args.eps))
    if clip is not None:
        for p in params:
            updates[p] = T.clip(updates[p], -float(clip), float(clip))
    return updates


def compile_functions(args):
    """Build both networks and compile the step, estimate and sample functions.

    Returns:
        dict with the layers, parameter lists and compiled functions:
        ``critic_step(x, z) -> w_estimate`` and ``generator_step(z) -> loss``
        (one synchronised step per call, collective), ``estimate(x, z) ->
        w_estimate`` and ``sample(z) -> images`` (local, no exchange).
    """
    x = T.matrix("x")
    z = T.matrix("z")
    generator = build_generator(args.noise_dim, args.width)
    critic = build_critic(args.width)
    fake = lasagne.layers.get_output(generator, z)
    critic_real = lasagne.layers.get_output(critic, x).mean()
    critic_fake = lasagne.layers.get_output(critic, fake).mean()
    w_estimate = critic_real - critic_fake
    generator_loss = -critic_fake

    critic_params = lasagne.layers.get_all_params(critic, trainable=True)
    generator_params = lasagne.layers.get_all_params(generator,
                                                     trainable=True)
    critic_updates = distributed_rmsprop(-w_estimate, critic_params, args,
                                         clip=args.clip)
    generator_updates = distributed_rmsprop(generator_loss, generator_params,
                                            args)
    return dict(
        critic=critic, generator=generator,
        critic_params=critic_params, generator_params=generator_params,
        critic_step=theano.function([x, z], w_estimate,
                                    updates=critic_updates),
        generator_step=theano.function([z], generator_loss,
                                       updates=generator_updates),
        estimate=theano.function([x, z], w_estimate),
        sample=theano.function([z], fake))


def real_batches(x, batch_size, rng):
    """Endless batches of ``x``, reshuffled by ``rng`` at every pass.

    Yields:
        ``(batch_size, 64)`` arrays; a pass drops its last partial batch.
    """
    n = len(x) - len(x) % batch_size
    while True:
        order = rng.permutation(len(x))
        for i in range(0, n, batch_size):
            yield x[order[i:i + batch_size]]


def params_digest(params):
    """SHA-256 of the parameters' bytes, in order (equal iff bit-identical)."""
    h = hashlib.sha256()
    for p in params:
        h.update(np.ascontiguousarray(p.get_value(borrow=True)).tobytes())
    return h.hexdigest()


def save_grid(images, path, *, title=None):
    """Write ``images`` (n, 64) in ``[-1, 1]`` as a square grid PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    side = int(np.ceil(np.sqrt(n)))
    grid = np.full((side * 9 + 1, side * 9 + 1), -1.0, np.float32)
    for k, img in enumerate(images):
        r, c = divmod(k, side)
        grid[1 + 9 * r:9 * (r + 1), 1 + 9 * c:9 * (c + 1)] = img.reshape(8, 8)
    fig, ax = plt.subplots(figsize=(5, 5.3), dpi=100)
    ax.imshow(grid, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=20,
                   help="reporting periods (default 20)")
    p.add_argument("--iters-per-epoch", type=int, default=100,
                   help="generator iterations per epoch (default 100)")
    p.add_argument("--n-critic", type=int, default=5,
                   help="critic steps per generator step (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=5e-5,
                   help="RMSProp learning rate (default 5e-5)")
    p.add_argument("--rho", type=float, default=0.99,
                   help="RMSProp decay of the squared-gradient average\n"
                        "(default 0.99, as in the paper's code)")
    p.add_argument("--eps", type=float, default=1e-16,
                   help="RMSProp epsilon, inside the square root in Lasagne\n"
                        "(default 1e-16 ~ the paper's code: 1e-8 outside\n"
                        "it). Behind clipped critic weights the gradients\n"
                        "are ~1e-5: Lasagne's default 1e-6 would shrink the\n"
                        "generator's steps ~100x and it would not learn")
    p.add_argument("--clip", type=float, default=0.01,
                   help="critic weights are clipped to [-c, c] (default 0.01)")
    p.add_argument("--noise-dim", type=int, default=32)
    p.add_argument("--width", type=int, default=256,
                   help="hidden units per layer, both networks")
    p.add_argument("--seed", type=int, default=0,
                   help="rank r draws noise and batches with seed + r")
    p.add_argument("--out", default=os.path.join("runs", "wgan"),
                   help="folder for samples.png and history.json "
                        "(rank 0; default runs/wgan)")
    p.add_argument("--history", default=None,
                   help="JSON history path (default OUT/history.json)")
    args = p.parse_args(argv)
    for name in ("epochs", "iters_per_epoch", "n_critic", "batch_size",
                 "noise_dim", "width"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} "
                    "must be >= 1")
    for name in ("lr", "clip", "eps"):
        if not getattr(args, name) > 0:
            p.error(f"--{name}={getattr(args, name)} must be > 0")
    if not 0 <= args.rho < 1:
        p.error(f"--rho={args.rho} must lie in [0, 1)")
    return args


def main(argv=None):
    args = parse_args(argv)
    ctx = get_context()
    ctx.apply_thread_limit()
    rank, size = ctx.rank, ctx.size
    floatx = theano.config.floatX
    rng = np.random.RandomState(args.seed + rank)
    lasagne.random.set_rng(np.random.RandomState(args.seed))  # rank 0 wins

    (x_tr, _), _ = load_digits()
    x = shard(x_tr.reshape(len(x_tr), PIXELS) * 2.0 - 1.0, rank, size)
    x = x.astype(floatx)
    if len(x) < args.batch_size:
        raise SystemExit(
            f"--batch-size={args.batch_size} exceeds this rank's shard of "
            f"{len(x)} digits ({size} ranks); use a smaller batch or fewer "
            "ranks")
    batches = real_batches(x, args.batch_size, rng)

    def noise(n):
        return rng.standard_normal((n, args.noise_dim)).astype(floatx)

    t0 = time.perf_counter()
    f = compile_functions(args)
    ctx.barrier()  # ranks compile at their own pace (Theano's cache lock)
    compile_s = time.perf_counter() - t0
    n_params = sum(lasagne.layers.count_params(f[k], trainable=True)
                   for k in ("critic", "generator"))
    if rank == 0:
        print(f"wgan_mlp: {n_params:,} parameters (critic + generator), "
              f"{size} rank(s) x batch {args.batch_size}, {len(x)} digits per "
              f"rank, n_critic {args.n_critic}, {args.iters_per_epoch} "
              f"generator iterations per epoch, compiled in {compile_s:.1f}s, "
              f"{ctx.threads} thread(s) per rank", flush=True)

    eval_z = noise(len(x))
    history = []
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        t_epoch = time.perf_counter()
        for _ in range(args.iters_per_epoch):
            for _ in range(args.n_critic):
                f["critic_step"](next(batches), noise(args.batch_size))
            f["generator_step"](noise(args.batch_size))
        seconds = time.perf_counter() - t_epoch
        local = np.array([f["estimate"](x, eval_z)], np.float64)
        w = float(ctx.allreduce_sum(local)[0] / size)
        real = args.iters_per_epoch * args.n_critic * args.batch_size * size
        history.append({"epoch": epoch, "wasserstein": w,
                        "samples_per_s": real / seconds})
        if rank == 0:
            print(f"epoch {epoch}/{args.epochs} wasserstein {w:.4f} "
                  f"samples/s {real / seconds:.1f}", flush=True)
    elapsed = time.perf_counter() - start

    digests = ctx.allgather(params_digest(f["generator_params"]
                                          + f["critic_params"]))
    identical = len(set(digests)) == 1
    critic_abs_max = max(float(np.abs(p.get_value()).max())
                         for p in f["critic_params"])
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        png = os.path.join(args.out, "samples.png")
        z = np.random.RandomState(args.seed).standard_normal(
            (64, args.noise_dim)).astype(floatx)
        save_grid(f["sample"](z), png,
                  title=f"WGAN, {args.epochs * args.iters_per_epoch} "
                        f"generator iterations, {size} rank(s)")
        path = args.history or os.path.join(args.out, "history.json")
        with open(path, "w") as fh:
            json.dump({"history": history,
                       "wasserstein": [h["wasserstein"] for h in history],
                       "critic_abs_max": critic_abs_max, "clip": args.clip,
                       "params_identical": identical, "png": png,
                       "ranks": size, "wall_s": elapsed,
                       "compile_s": compile_s, "args": vars(args)}, fh,
                      indent=1)
        print(f"final: wasserstein={history[-1]['wasserstein']:.4f} "
              f"png={png} ranks={size} wall_s={elapsed:.1f} "
              f"params_identical={identical}", flush=True)
    if not identical:
        raise SystemExit(f"rank {rank}: ranks hold different parameters "
                         f"(digests {digests}); the exchange is broken")
    return history


if __name__ == "__main__":
    main()
