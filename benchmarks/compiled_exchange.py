"""How to leave a compiled train step for the gradient exchange: the
mechanisms compared side by side, in one run.

Every rank runs a compiled function that takes one fused float32 buffer
(the gradients of a WRN-16-4 by default, 2.75 M values), averages it over
the ranks and returns it; the figure per mechanism is the median time of
one call on the slowest rank, and its ratio to the same exchange done on
the host outside any compiled code (``rule.on_gradients`` on a numpy
array, the torch backend's path). The compiled function without the
exchange is timed too (``no exchange``: dispatch and the copy ``g * 1.0``):

* ``jax.io_callback``: an ordered ``jax.experimental.io_callback`` inside
  ``jax.jit`` calls the core's rule (what ``TMPISync`` uses on JAX);
* ``jax.pure_callback``: the same through ``pure_callback`` (unordered:
  XLA may reorder or drop it, so it is not safe for collectives; timed for
  comparison);
* ``mpi4jax.allreduce``: MPI called from XLA itself, where ``mpi4jax`` is
  installed (it bypasses the core's rule and exchanger);
* ``tf.numpy_function`` and ``tf.py_function`` inside ``tf.function``
  (what ``TMPISync`` uses on TensorFlow is the first).

The JAX and TensorFlow parts run where those packages are installed.

Launch::

    mpiexec -n 2 python benchmarks/compiled_exchange.py
    mpiexec -n 2 python benchmarks/compiled_exchange.py --values 1000000 \\
        --repeats 30 --json mechanisms.json
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TMPI_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from tmpi_core import get_context, make_rule  # noqa: E402

__all__ = ["main"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--values", type=int, default=2_748_890,
                   help="float32 values in the buffer (default: WRN-16-4)")
    p.add_argument("--repeats", type=int, default=20,
                   help="timed calls per mechanism (after 3 warm-up calls)")
    p.add_argument("--strategy", default="auto",
                   help="the BSP rule's exchanger (default auto)")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    if args.values < 1 or args.repeats < 3:
        p.error("--values must be >= 1 and --repeats >= 3")
    return args


def _time(ctx, call, repeats):
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        ctx.barrier()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    slowest = ctx.allgather(times)
    return statistics.median(max(t) for t in zip(*slowest))


def mechanisms(ctx, rule, grad):
    """name -> a function that runs one exchange of ``grad``."""
    calls = {"host (numpy)": lambda: rule.on_gradients([grad])[0]}
    if importlib.util.find_spec("jax") is not None:
        calls.update(_jax_calls(rule, grad))
    if importlib.util.find_spec("tensorflow") is not None:
        calls.update(_tf_calls(rule, grad))
    return calls


def _host(rule):
    def exchange(a):
        return np.array(rule.on_gradients([np.asarray(a)])[0])
    return exchange


def _jax_calls(rule, grad):
    import jax
    from jax.experimental import io_callback

    spec = jax.ShapeDtypeStruct(grad.shape, grad.dtype)
    exchange = _host(rule)
    calls = {}

    @jax.jit
    def alone(g):
        return g * 1.0

    @jax.jit
    def ordered(g):
        return io_callback(exchange, spec, g * 1.0, ordered=True)

    @jax.jit
    def pure(g):
        return jax.pure_callback(exchange, spec, g * 1.0)

    x = jax.numpy.asarray(grad)
    calls["jax.jit, no exchange"] = lambda: alone(x).block_until_ready()
    calls["jax.io_callback"] = lambda: ordered(x).block_until_ready()
    calls["jax.pure_callback"] = lambda: pure(x).block_until_ready()
    if importlib.util.find_spec("mpi4jax") is not None:
        import mpi4jax
        from mpi4py import MPI

        size = rule.comm.Get_size()

        @jax.jit
        def native(g):
            total = mpi4jax.allreduce(g * 1.0, op=MPI.SUM, comm=rule.comm)
            return total / size

        calls["mpi4jax.allreduce"] = lambda: native(x).block_until_ready()
    return calls


def _tf_calls(rule, grad):
    import tensorflow as tf

    exchange = _host(rule)
    x = tf.constant(grad)

    @tf.function
    def alone(g):
        return g * 1.0

    @tf.function
    def numpy_function(g):
        out = tf.numpy_function(exchange, [g * 1.0], tf.float32,
                                stateful=True)
        out.set_shape(g.shape)
        return out

    @tf.function
    def py_function(g):
        out = tf.py_function(lambda t: exchange(t.numpy()), [g * 1.0],
                             tf.float32)
        out.set_shape(g.shape)
        return out

    return {"tf.function, no exchange": lambda: alone(x).numpy(),
            "tf.numpy_function": lambda: numpy_function(x).numpy(),
            "tf.py_function": lambda: py_function(x).numpy()}


def main(argv=None):
    """Time every available mechanism; print and return the figures."""
    args = parse_args(argv)
    ctx = get_context()
    rule = make_rule("bsp", strategy=args.strategy)
    grad = np.random.default_rng(ctx.rank).standard_normal(
        args.values).astype(np.float32)
    rule.start([np.zeros(1, np.float32)])
    calls = mechanisms(ctx, rule, grad)
    if ctx.rank == 0:
        print(f"{ctx.size} ranks, {args.values:,} float32 values "
              f"({args.values * 4 / 2**20:.1f} MiB), strategy "
              f"{args.strategy}, median of {args.repeats} calls, slowest "
              "rank", flush=True)
    # every mechanism must return the mean over ranks (the ones without
    # an exchange return the buffer itself)
    mean = grad.astype(np.float64)
    ctx.allreduce_sum(mean)
    mean /= ctx.size
    for name, call in calls.items():
        want = grad if "no exchange" in name else mean
        got = np.asarray(call(), dtype=np.float64).ravel()
        if not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            raise AssertionError(f"{name} returned a wrong result")
    medians = {name: _time(ctx, call, args.repeats)
               for name, call in calls.items()}
    base = medians["host (numpy)"]
    if ctx.rank == 0:
        for name, t in medians.items():
            print(f"  {name:<24} {1e3 * t:8.2f} ms  {t / base:5.2f}x host",
                  flush=True)
    result = {"ranks": ctx.size, "values": args.values,
              "strategy": args.strategy, "median_s": medians,
              "over_host": {k: v / base for k, v in medians.items()},
              "loadavg": os.getloadavg()}
    if args.json and ctx.rank == 0:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    rule.close()
    return result


if __name__ == "__main__":
    main()
