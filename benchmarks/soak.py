"""Soak: many BSP exchanges, many GoSGD runs and one long GoSGD run, with
resident memory sampled.

Launch it under MPI yourself, from the repository root::

    mpiexec -n 2 python benchmarks/soak.py                  # the full soak
    mpiexec -n 2 python benchmarks/soak.py --parts bsp --bsp-steps 2000
    mpiexec -n 4 python benchmarks/soak.py --parts gosgd --gosgd-runs 100
    mpiexec -n 2 python benchmarks/soak.py --help

(``mpiexec`` is the one next to the environment's ``python``, e.g.
``.venv/bin/mpiexec``.) The defaults are the reliability issue's sizes:

* **BSP**: 20,000 exchange steps per mode on the parameter set of a
  Wide-ResNet-16-2 (44 float32 tensors, 2.64 MiB), first ``mode='grads'``
  through ``on_gradients``, then ``mode='params'`` through ``end_step``.
  Every step rank ``r`` offers ``base + (r + 1) c_t`` (``c_t`` changes every
  step), whose mean over ``p`` ranks is ``base + c_t (p + 1) / 2``; the
  result is checked against that on every rank (every ``--check-every``
  steps). A wrong value is a failure.
* **GoSGD**: 1,000 independent runs (``p = 0.5``, 20 local steps, a fresh
  seed each) on a Wide-ResNet-10-1's 25 tensors (0.30 MiB, so messages go
  beyond MPICH's eager limit). Each local step sleeps 0-2 ms (a different
  draw on every rank: real asynchrony) and moves ``x_i`` towards a
  rank-dependent target. Every run checks, from all ranks' records: before
  ``finalize``, ``sum_i a_i`` plus the weights in flight is 1 and
  ``sum_i a_i x_i`` plus the messages in flight equals the starting mean
  plus every local step's ``a_i dx_i`` (checked on element sums); after it,
  every message sent was received exactly once, the total weight was 1,
  weights restart at ``1/p``, and every rank holds the same consensus,
  equal to that expected weighted sum.
* **EASGD, asynchronous**: rank 0 serves the center while every worker
  runs 20,000 local steps (``tau = 1``, 0.30 MiB of parameters, a random
  0-0.2 ms sleep per step): every exchange served exactly once (the
  server's count equals the workers' sum), the center moved by exactly the
  elastic differences the workers received (the server's running sum of
  them against the workers' sums), and every rank holds the same center
  after ``finalize``.
* **GoSGD, long**: one run of 200,000 steps as in training (default
  options, ``p = 1``, 4 KiB of parameters, no sleeps): every message
  delivered, total weight 1, the same consensus on every rank, equal to the
  mean of the starting vectors, and no per-message record kept.

Resident memory (current RSS from ``/proc/self/statm``; peak RSS from
``getrusage`` where there is no ``/proc``) is sampled on every rank every
``--sample-every`` steps and after every GoSGD run. After a warm-up (the
first 10 % of steps or runs), it must not grow more than ``--bound-mb``
(8 MiB) above its value at the end of the warm-up on any rank. Nothing in
these loops should hold memory across steps, so any steady leak grows
without limit; 8 MiB is well above the allocator noise (under 1.5 MiB in
practice, 4 MiB in short oversubscribed runs) and below a leak of ~470
bytes per BSP step over 18,000 steps, ~9 KiB per GoSGD run over 900 runs
(one leaked message buffer is 0.3 MiB) or ~45 bytes per step of the long
run (a per-message record costs about 100).

A watchdog thread on every rank aborts the job (``FAIL hang``) when no step
or run finishes for ``--stall-s`` seconds, so a lost message or a deadlock
ends the soak instead of stalling it. Rank 0 prints a progress line every
``--progress-s`` seconds and one verdict line per part::

    SOAK bsp-grads PASS ranks=2 steps=20000 seconds=... rss_growth_mib=...

then ``SOAK PASS`` or ``SOAK FAIL``; the exit status is 1 on a failure.
"""

import argparse
import collections
import hashlib
import json
import os
import resource
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from exchange import wrn_param_shapes  # noqa: E402
from tmpi_core.buffer import FlatBuffer  # noqa: E402
from tmpi_core.context import get_context  # noqa: E402
from tmpi_core.rules.bsp import BSP  # noqa: E402
from tmpi_core.rules.easgd import EASGD  # noqa: E402
from tmpi_core.rules.gosgd import GoSGD  # noqa: E402

__all__ = ["RSSMeter", "Watchdog", "main", "soak_bsp", "soak_gosgd"]

MiB = 2.0**20
PARTS = ("bsp", "gosgd", "gosgd-long", "easgd")


# -- resident memory ---------------------------------------------------------
class RSSMeter:
    """Samples this process's resident memory.

    Current RSS from ``/proc/self/statm`` (resident pages times the page
    size) where it exists, read with ``os.pread`` on a descriptor kept open;
    elsewhere the peak RSS from ``resource.getrusage`` (which cannot go down,
    so growth is still caught).

    Attributes:
        source: ``'statm'`` or ``'maxrss'``.
        samples: ``[(index, bytes), ...]`` in sampling order.
    """

    def __init__(self):
        self.samples = []
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") \
            else 4096
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
            self.source = "statm"
        except OSError:
            self._fd = None
            self.source = "maxrss"

    def read(self):
        """Resident bytes now (or the peak, see the class docstring)."""
        if self._fd is not None:
            return int(os.pread(self._fd, 128, 0).split()[1]) * self._page
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024

    def sample(self, index):
        """Record the current value against ``index`` (a step or a run)."""
        rss = self.read()
        self.samples.append((index, rss))
        return rss

    def summary(self, warmup):
        """Start, base (first sample at or after ``warmup``), end, growth.

        Growth is the largest sample after the base minus the base, in bytes.
        """
        base_i = next((i for i, (k, _) in enumerate(self.samples)
                       if k >= warmup), len(self.samples) - 1)
        base = self.samples[base_i][1]
        after = [v for _, v in self.samples[base_i:]]
        return {"start": self.samples[0][1], "base": base,
                "end": self.samples[-1][1], "peak": max(after),
                "growth": max(after) - base, "count": len(self.samples),
                "trace": list(self.samples)}

    def close(self):
        """Close the ``/proc`` descriptor."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- hang detection ----------------------------------------------------------
class Watchdog:
    """Aborts the MPI job when :meth:`beat` is not called for ``stall_s``.

    Args:
        comm: the communicator to abort.
        stall_s: seconds without a beat that count as a hang (0: off).
        report_dir: if given, the rank that detects a hang also writes its
            ``FAIL hang`` line to ``report_dir/hang.rank{r}.txt`` before
            aborting: the launcher may tear down before it forwards the
            aborting rank's last stdout line.
    """

    def __init__(self, comm, stall_s, report_dir=None):
        self.comm = comm
        self.stall_s = stall_s
        self.report_dir = report_dir
        self.stage = "start-up"
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = None
        if stall_s > 0:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()

    def beat(self, stage=None):
        """Record progress (cheap: one clock read)."""
        self._last = time.monotonic()
        if stage is not None:
            self.stage = stage

    def stop(self):
        """Stop watching."""
        self._stop.set()

    def _watch(self):
        while not self._stop.wait(min(1.0, self.stall_s / 4)):
            idle = time.monotonic() - self._last
            if idle > self.stall_s:
                part = self.stage.split(" ")[0]
                rank = self.comm.Get_rank()
                line = (f"SOAK {part} FAIL hang rank={rank} "
                        f"last_progress={self.stage.replace(' ', '_')} "
                        f"seconds_without_progress={idle:.1f}")
                if self.report_dir:
                    path = os.path.join(self.report_dir,
                                        f"hang.rank{rank}.txt")
                    with open(path, "w") as f:
                        f.write(line + "\n")
                        f.flush()
                        os.fsync(f.fileno())
                print(line, flush=True)
                sys.stderr.flush()
                time.sleep(0.5)         # give the launcher time to forward it
                self.comm.Abort(3)


# -- BSP ---------------------------------------------------------------------
def soak_bsp(ctx, args, mode, watchdog):
    """``args.bsp_steps`` BSP exchanges in ``mode``; returns rank 0's verdict.

    Every rank returns a dict; only rank 0's holds the gathered figures.
    """
    rank, size = ctx.rank, ctx.size
    label = f"bsp-{mode}"
    shapes = [s for _, s in wrn_param_shapes(args.depth, args.width)]
    base, local, scratch = (FlatBuffer(shapes) for _ in range(3))
    # Exact in float32: multiples of 1/1024 below 4, plus multiples of 1/8.
    base.data[:] = (np.arange(base.size) % 4096) / 1024.0
    rule = BSP(mode=mode, strategy=args.strategy)
    rule.start(list(local.views))
    if args.inject_error is not None:
        _corrupt_exchange(rule, args.inject_error, rank == size - 1)
    steps, check_every = args.bsp_steps, args.check_every
    warmup = _warmup(steps, args.warmup, 100)
    # Tolerance: fp32 rounding of the 1/p scale and the p-term sum; for
    # asa16, its stated bound (two fp16 roundings of values <= the mean).
    top = float(base.data.max()) + 125.0 * size
    tol = 8 * float(np.finfo(np.float32).eps) * top
    if args.strategy == "asa16":
        tol += 2 * 2.0**-11 * top + (size + 1) * 2.0**-25
    rss = RSSMeter()
    watchdog.beat(f"{label} start")
    leak = []
    bad, first_bad, max_err = 0, None, 0.0
    t0 = last = time.perf_counter()
    last_step = 0
    for step in range(steps):
        c = ((step * 7919) % 1000 + 1) / 8.0
        np.add(base.data, (rank + 1) * c, out=local.data)
        if mode == "grads":
            out = rule.on_gradients(local.views)
            rule.end_step()
        else:
            out = rule.end_step(local.views if rule.wants_params() else None)
        if step % check_every == 0 or step == steps - 1:
            for got, b, s in zip(out, base.views, scratch.views):
                np.subtract(got, b, out=s)
            err = scratch.data
            err -= c * (size + 1) / 2.0
            np.abs(err, out=err)
            e = float(err.max())
            max_err = max(max_err, e)
            if not e <= tol:                   # NaN fails too
                bad += 1
                first_bad = step if first_bad is None else first_bad
        if args.inject_leak:
            leak.append(np.ones(args.inject_leak // 8))
        if step % args.sample_every == 0 or step == steps - 1:
            r = rss.sample(step)
            watchdog.beat(f"{label} step {step}")
            now = time.perf_counter()
            if rank == 0 and now - last >= args.progress_s:
                print(f"  {label}: {step + 1}/{steps} steps, "
                      f"{(step - last_step) / (now - last):.0f} steps/s, "
                      f"rss {r / MiB:.1f} MiB (rank 0)", flush=True)
                last, last_step = now, step
    seconds = time.perf_counter() - t0
    rule.finalize(list(local.views))
    mine = {"rss": rss.summary(warmup), "bad": bad, "first_bad": first_bad,
            "max_err": max_err}
    rss.close()
    gathered = ctx.comm.gather(mine, root=0)
    if rank != 0:
        return {}
    mem = _memory_figures([g["rss"] for g in gathered], args.bound_mb)
    bad = max(g["bad"] for g in gathered)    # steps wrong on some rank
    firsts = [g["first_bad"] for g in gathered if g["first_bad"] is not None]
    ok = bad == 0 and mem["rss_ok"]
    figures = {
        "ranks": size, "steps": steps, "seconds": round(seconds, 2),
        "steps_per_s": round(steps / seconds, 1),
        "params_mib": round(base.nbytes / MiB, 3), "tensors": len(shapes),
        "strategy": args.strategy, "checked_every": check_every,
        "bad_steps": bad, "first_bad_step": min(firsts) if firsts else -1,
        "max_err": max(g["max_err"] for g in gathered), "tol": tol,
        **mem,
    }
    return _verdict(label, ok, figures, "wrong average" if bad else "")


def _corrupt_exchange(rule, at_step, corrupt_here):
    """Test hook: one rank adds 1.0 to its share inside the exchange."""
    exchanger = rule._exchanger
    inner = exchanger.allreduce_sum
    calls = [0]

    def allreduce_sum(buffer):
        if corrupt_here and calls[0] == at_step:
            buffer.data[buffer.size // 2] += 1.0
        calls[0] += 1
        inner(buffer)

    exchanger.allreduce_sum = allreduce_sum


# -- GoSGD -------------------------------------------------------------------
def soak_gosgd(ctx, args, watchdog):
    """``args.gosgd_runs`` GoSGD runs with invariant checks; rank 0's verdict."""
    rank, size = ctx.rank, ctx.size
    comm = ctx.comm
    shapes = [s for _, s in wrn_param_shapes(args.gosgd_depth,
                                             args.gosgd_width)]
    x = FlatBuffer(shapes)
    n = x.size
    pattern = (np.arange(n) % 97) / 16.0
    target = (pattern * 0.5 - 2.0 * rank).astype(np.float32)
    delta = np.empty(n, np.float32)
    step64 = np.empty(n, np.float64)
    contrib = np.empty(n, np.float64)          # sum over steps of a_i dx_i
    expected = np.empty(n, np.float64)
    runs = args.gosgd_runs
    warmup = _warmup(runs, args.warmup, 10)
    rss = RSSMeter()
    rss.sample(-1)
    leak = []
    problems = collections.Counter()
    first_problem = None
    totals = collections.Counter()
    max_w_err = max_s_err = max_c_err = 0.0
    t0 = last = time.perf_counter()
    last_run = 0
    for run in range(runs):
        watchdog.beat(f"gosgd run {run}")
        rule = GoSGD(p=args.p, seed=args.seed + 7919 * run,
                     log_messages=True)
        rule.start(list(x.views))
        x.data[:] = pattern + 3.0 * rank + (run % 7)
        start_sum = float(x.data.sum(dtype=np.float64))
        np.multiply(x.data, 1.0 / size, out=expected, dtype=np.float64)
        contrib.fill(0.0)
        delays = np.random.default_rng((args.seed, run, rank))
        pushes = []                    # (dest, seq, weight, element sum)
        lost = False
        for step in range(args.gosgd_steps):
            time.sleep(delays.uniform(0.0, args.max_delay_ms / 1e3))
            if args.inject_loss == run and rank == 1 and not lost:
                lost = _steal_message(comm)
            # local step x <- x - lr (x - target); it moves sum a x by a dx
            np.subtract(x.data, target, out=delta)
            delta *= -args.lr
            np.multiply(delta, rule.weight, out=step64, dtype=np.float64)
            contrib += step64
            x.data += delta
            sent_before = len(rule.sent)
            new = rule.end_step(x.views if rule.wants_params() else None)
            if new is not None:
                for mine, merged in zip(x.views, new):
                    np.copyto(mine, merged)
            if len(rule.sent) > sent_before:   # the message holds x, a_i
                dest, seq = rule.sent[-1]
                pushes.append((dest, seq, rule.weight,
                               float(x.data.sum(dtype=np.float64))))
        before = comm.gather(
            {"weight": rule.weight,
             "wsum": rule.weight * float(x.data.sum(dtype=np.float64)),
             "start_sum": start_sum, "contrib": float(contrib.sum()),
             "pushes": pushes, "received": list(rule.received)}, root=0)
        expected += contrib
        comm.Allreduce(ctx.MPI.IN_PLACE, expected, op=ctx.MPI.SUM)
        consensus = rule.finalize(list(x.views))
        for mine, merged in zip(x.views, consensus):
            np.copyto(mine, merged)
        np.subtract(x.data, expected, out=step64)
        np.abs(step64, out=step64)
        c_err = float(step64.max())
        after = comm.gather(
            {"sent": list(rule.sent), "received": list(rule.received),
             "total_weight": rule.total_weight, "weight_after": rule.weight,
             "digest": hashlib.blake2b(x.data, digest_size=16).digest(),
             "c_err": c_err, "scale": float(np.abs(expected).max())}, root=0)
        del rule, consensus, new
        if rank == 0:
            found, figs = _check_gosgd_run(before, after, size)
            max_w_err = max(max_w_err, figs["w_err"])
            max_s_err = max(max_s_err, figs["s_err"])
            max_c_err = max(max_c_err, figs["c_err"])
            totals.update(messages=figs["messages"],
                          in_flight=figs["in_flight"])
            problems.update(found)
            if found:
                totals["bad_runs"] += 1
                if first_problem is None:
                    first_problem = (run, sorted(found))
        if args.inject_leak:
            leak.append(np.ones(args.inject_leak // 8))
        r = rss.sample(run)
        now = time.perf_counter()
        if rank == 0 and now - last >= args.progress_s:
            print(f"  gosgd: {run + 1}/{runs} runs, "
                  f"{(run - last_run) / (now - last):.1f} runs/s, "
                  f"{totals['messages']} messages, rss {r / MiB:.1f} MiB "
                  "(rank 0)", flush=True)
            last, last_run = now, run
    seconds = time.perf_counter() - t0
    gathered = comm.gather(rss.summary(warmup), root=0)
    rss.close()
    if rank != 0:
        return {}
    mem = _memory_figures(gathered, args.bound_mb)
    ok = not problems and mem["rss_ok"]
    figures = {
        "ranks": size, "runs": runs, "steps_per_run": args.gosgd_steps,
        "p": args.p, "seconds": round(seconds, 2),
        "runs_per_s": round(runs / seconds, 2),
        "params_mib": round(x.nbytes / MiB, 3), "tensors": len(shapes),
        "messages": totals["messages"],
        "in_flight_at_finalize": totals["in_flight"],
        "lost": problems["lost"], "duplicated": problems["duplicated"],
        "bad_runs": totals["bad_runs"],
        "max_weight_err": max_w_err, "max_sum_rel_err": max_s_err,
        "max_consensus_rel_err": max_c_err, **mem,
    }
    why = "" if not problems else \
        f"first at run {first_problem[0]}: {','.join(first_problem[1])}"
    return _verdict("gosgd", ok, figures, why)


def soak_gosgd_long(ctx, args, watchdog):
    """One GoSGD run of ``args.long_steps`` steps as in training (default
    options: no message lists); returns rank 0's verdict."""
    rank, size, comm = ctx.rank, ctx.size, ctx.comm
    half = args.long_size // 2
    x = FlatBuffer([(half,), (args.long_size - half,)])
    rule = GoSGD(p=args.long_p, seed=args.seed)
    rule.start(list(x.views))
    x.data[:] = (np.arange(x.size) % 97) / 16.0 + 3.0 * rank
    expected = x.data.astype(np.float64) / size    # no training: the mean
    comm.Allreduce(ctx.MPI.IN_PLACE, expected, op=ctx.MPI.SUM)
    steps = args.long_steps
    warmup = _warmup(steps, args.warmup, 100)
    every = max(args.sample_every, steps // 1000)
    rss = RSSMeter()
    watchdog.beat("gosgd-long start")
    t0 = last = time.perf_counter()
    last_step = 0
    for step in range(steps):
        new = rule.end_step(x.views if rule.wants_params() else None)
        if new is not None:
            for mine, merged in zip(x.views, new):
                np.copyto(mine, merged)
        if step % every == 0 or step == steps - 1:
            r = rss.sample(step)
            watchdog.beat(f"gosgd-long step {step}")
            now = time.perf_counter()
            if rank == 0 and now - last >= args.progress_s:
                print(f"  gosgd-long: {step + 1}/{steps} steps, "
                      f"{(step - last_step) / (now - last):.0f} steps/s, "
                      f"{rule.messages_sent} messages from rank 0, "
                      f"rss {r / MiB:.1f} MiB (rank 0)", flush=True)
                last, last_step = now, step
    seconds = time.perf_counter() - t0
    for mine, merged in zip(x.views, rule.finalize(list(x.views))):
        np.copyto(mine, merged)
    err = float(np.abs(x.data - expected).max()) / max(
        1.0, float(np.abs(expected).max()))
    gathered = comm.gather(
        {"sent": rule.messages_sent, "received": rule.messages_received,
         "logged": len(rule.sent) + len(rule.received),
         "total_weight": rule.total_weight, "weight_after": rule.weight,
         "digest": hashlib.blake2b(x.data, digest_size=16).digest(),
         "err": err, "rss": rss.summary(warmup)}, root=0)
    rss.close()
    if rank != 0:
        return {}
    mem = _memory_figures([g["rss"] for g in gathered], args.bound_mb)
    sent = sum(g["sent"] for g in gathered)
    received = sum(g["received"] for g in gathered)
    w_err = max(abs(g["total_weight"] - 1.0) for g in gathered)
    c_err = max(g["err"] for g in gathered)
    # A merge rounds only the step towards the sender, x += c (x_s - x), so
    # the consensus stays within a few float32 roundoffs however long the
    # run (measured <= 6 up to 1.6M merges); a lost or doubly merged message
    # is off by O(1/p), and the older two-coefficient merge drifted by ~1e-4
    # per million merges on 3 ranks.
    c_tol = 64 * 2.0**-24
    why = [w for w, bad in (
        ("messages lost", sent != received),
        ("weight not conserved", not w_err <= 1e-12),
        ("weights not reset", any(g["weight_after"] != 1.0 / size
                                  for g in gathered)),
        ("consensus differs", any(g["digest"] != gathered[0]["digest"]
                                  for g in gathered)),
        ("consensus wrong", not c_err <= c_tol),
        ("message lists kept", any(g["logged"] for g in gathered)),
    ) if bad]
    figures = {
        "ranks": size, "steps": steps, "p": args.long_p,
        "seconds": round(seconds, 2), "steps_per_s": round(steps / seconds, 1),
        "params_kib": round(x.nbytes / 1024, 1), "messages": sent,
        "received": received, "max_weight_err": w_err,
        "consensus_rel_err": c_err, "consensus_tol": c_tol, **mem,
    }
    return _verdict("gosgd-long", not why and mem["rss_ok"], figures,
                    ", ".join(why))


def soak_easgd(ctx, args, watchdog):
    """Asynchronous EASGD: the server serves ``args.easgd_steps`` local steps
    of every worker; returns rank 0's verdict."""
    rank, size, comm = ctx.rank, ctx.size, ctx.comm
    x = FlatBuffer([shape for _, shape in wrn_param_shapes(10, 1)])
    x.data[:] = np.linspace(-1.0, 1.0, x.size) * (rank + 1)
    rule = EASGD(tau=args.easgd_tau)
    for mine, start in zip(x.views, rule.start(list(x.views))):
        np.copyto(mine, start)                      # rank 0's, everywhere
    c0 = x.data.astype(np.float64)
    steps = args.easgd_steps
    rss = RSSMeter()
    rng = np.random.default_rng(args.seed + rank)
    every = max(1, args.sample_every)
    watchdog.beat("easgd start")
    t0 = time.perf_counter()
    if rule.role == "server":
        total = (size - 1) * (steps // args.easgd_tau)
        warmup = _warmup(total, args.warmup, 10)

        def on_exchange(exchanges, center):
            if exchanges % every == 0:
                rss.sample(exchanges)
                watchdog.beat(f"easgd exchange {exchanges}")
                if exchanges % (every * 50) == 0:
                    print(f"  easgd: {exchanges}/{total} exchanges served",
                          flush=True)
        rule.serve(on_exchange=on_exchange)
    else:
        warmup = _warmup(steps, args.warmup, 10)
        target = np.float32(rank)
        for step in range(steps):
            x.data += np.float32(0.01) * (target - x.data)   # a local step
            if args.easgd_max_delay_ms:
                time.sleep(rng.uniform(0, args.easgd_max_delay_ms) / 1e3)
            new = rule.end_step(x.views if rule.wants_params() else None)
            if new is not None:
                for mine, merged in zip(x.views, new):
                    np.copyto(mine, merged)
            if step % every == 0:
                rss.sample(step)
                watchdog.beat(f"easgd step {step}")
    seconds = time.perf_counter() - t0
    for mine, merged in zip(x.views, rule.finalize(list(x.views))):
        np.copyto(mine, merged)
    gathered = comm.gather(
        {"role": rule.role, "exchanges": rule.exchanges,
         "elastic": rule.elastic_total.astype(np.float64),
         "moved": x.data.astype(np.float64) - c0,
         "digest": hashlib.blake2b(x.data, digest_size=16).digest(),
         "rss": rss.summary(warmup)}, root=0)
    rss.close()
    if rank != 0:
        return {}
    server = gathered[0]
    workers = gathered[1:]
    served = server["exchanges"]
    made = sum(w["exchanges"] for w in workers)
    expected = (size - 1) * (steps // args.easgd_tau)
    received = sum(w["elastic"] for w in workers)
    scale = max(1e-6, float(np.abs(server["elastic"]).max()))
    # float32 sums of the same differences in other orders: each of the
    # `served` additions may round by 2^-24 of the running sum. The counts
    # above catch a lost or doubled exchange; this catches a corrupted one.
    e_err = float(np.abs(server["elastic"] - received).max()) / scale
    m_err = float(np.abs(server["moved"] - server["elastic"]).max()) / scale
    tol = max(1e-6, served * 2.0**-24)
    mem = _memory_figures([g["rss"] for g in gathered], args.bound_mb)
    why = [w for w, bad in (
        ("exchanges lost", not served == made == expected),
        ("elastic sums differ", not e_err <= tol),
        ("center not moved by the elastic sum", not m_err <= tol),
        ("centers differ", any(g["digest"] != server["digest"]
                               for g in gathered)),
    ) if bad]
    figures = {
        "ranks": size, "steps": steps, "tau": args.easgd_tau,
        "seconds": round(seconds, 2), "exchanges": served,
        "exchanges_per_s": round(served / seconds, 1),
        "params_mib": round(x.nbytes / MiB, 2), "elastic_rel_err": e_err,
        "center_rel_err": m_err, "rel_tol": tol, **mem,
    }
    return _verdict("easgd", not why and mem["rss_ok"], figures,
                    ", ".join(why))


def _steal_message(comm):
    """Test hook: receive and drop one gossip message (a lost message)."""
    from mpi4py import MPI

    status = MPI.Status()
    if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
        return False
    sink = bytearray(status.Get_count(MPI.BYTE))
    comm.Recv([sink, MPI.BYTE], source=status.Get_source(),
              tag=status.Get_tag())
    return True


def _check_gosgd_run(before, after, size):
    """One run's invariants from every rank's records (rank 0).

    Returns:
        (Counter of problems found, dict of figures).
    """
    found = collections.Counter()
    sent = collections.Counter(
        (src, dest, seq) for src, rec in enumerate(after)
        for dest, seq in rec["sent"])
    received = collections.Counter(
        (src, dest, seq) for dest, rec in enumerate(after)
        for src, seq in rec["received"])
    if sent - received:
        found["lost"] += sum((sent - received).values())
    if received - sent or any(v > 1 for v in received.values()):
        found["duplicated"] += sum((received - sent).values()) + sum(
            v - 1 for v in received.values() if v > 1)
    # Before finalize: what the ranks hold plus what is in flight.
    arrived = {(src, dest, seq) for dest, rec in enumerate(before)
               for src, seq in rec["received"]}
    flying = [(w, s) for src, rec in enumerate(before)
              for dest, seq, w, s in rec["pushes"]
              if (src, dest, seq) not in arrived]
    weight = sum(r["weight"] for r in before) + sum(w for w, _ in flying)
    w_err = abs(weight - 1.0)
    if not w_err <= 1e-12:
        found["weight_before"] += 1
    wsum = sum(r["wsum"] for r in before) + sum(w * s for w, s in flying)
    want = sum(r["start_sum"] for r in before) / size + \
        sum(r["contrib"] for r in before)
    s_err = abs(wsum - want) / max(1.0, abs(want))
    if not s_err <= 1e-5:
        found["weighted_sum_before"] += 1
    for rec in after:
        if not abs(rec["total_weight"] - 1.0) <= 1e-12:
            found["weight_at_finalize"] += 1
        if rec["weight_after"] != 1.0 / size:
            found["weight_after"] += 1
        if rec["digest"] != after[0]["digest"]:
            found["consensus_differs"] += 1
    c_err = max(r["c_err"] / max(1.0, r["scale"]) for r in after)
    if not c_err <= 1e-5:
        found["consensus_value"] += 1
    return found, {"w_err": w_err, "s_err": s_err, "c_err": c_err,
                   "messages": sum(sent.values()), "in_flight": len(flying)}


# -- shared ------------------------------------------------------------------
def _warmup(count, fraction, minimum):
    return min(count - 1, max(minimum, int(count * fraction)))


def _memory_figures(summaries, bound_mb):
    """Max over ranks of the RSS figures, in MiB, and the verdict on growth."""
    def mib(key):
        return round(max(s[key] for s in summaries) / MiB, 2)

    growth = max(s["growth"] for s in summaries) / MiB
    return {"rss_start_mib": mib("start"), "rss_base_mib": mib("base"),
            "rss_end_mib": mib("end"), "rss_peak_mib": mib("peak"),
            "rss_growth_mib": round(growth, 3), "bound_mib": bound_mb,
            "rss_samples": min(s["count"] for s in summaries),
            "rss_ok": growth <= bound_mb,
            "rss_trace": [s["trace"] for s in summaries]}


def _verdict(label, ok, figures, why):
    trace = figures.pop("rss_trace")
    if not figures.pop("rss_ok"):
        why = ", ".join(w for w in (why, "memory grew beyond the bound") if w)
    words = " ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
    line = f"SOAK {label} {'PASS' if ok else 'FAIL'} {words}"
    if why:
        line += f" why={why.replace(' ', '_')}"
    print(line, flush=True)
    return {"label": label, "ok": ok, **figures, "why": why,
            "rss_bytes_per_rank": trace}


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts to run: {', '.join(PARTS)}")
    p.add_argument("--bsp-steps", type=int, default=20000,
                   help="exchange steps per BSP mode")
    p.add_argument("--bsp-modes", default="grads,params",
                   help="BSP modes to soak, in order")
    p.add_argument("--depth", type=int, default=16,
                   help="BSP parameter set: Wide-ResNet depth")
    p.add_argument("--width", type=int, default=2,
                   help="BSP parameter set: Wide-ResNet width")
    p.add_argument("--strategy", default="auto",
                   help="BSP exchanger: auto (default: shm on one host, "
                        "else ar), ar, shm or asa16")
    p.add_argument("--check-every", type=int, default=1,
                   help="check the BSP average every k steps")
    p.add_argument("--gosgd-runs", type=int, default=1000)
    p.add_argument("--gosgd-steps", type=int, default=20,
                   help="local steps per GoSGD run")
    p.add_argument("--gosgd-depth", type=int, default=10,
                   help="GoSGD parameter set: Wide-ResNet depth")
    p.add_argument("--gosgd-width", type=int, default=1,
                   help="GoSGD parameter set: Wide-ResNet width")
    p.add_argument("--p", type=float, default=0.5,
                   help="GoSGD push probability")
    p.add_argument("--lr", type=float, default=0.1,
                   help="GoSGD local step towards each rank's target")
    p.add_argument("--max-delay-ms", type=float, default=2.0,
                   help="GoSGD local steps sleep uniformly 0..this")
    p.add_argument("--long-steps", type=int, default=200000,
                   help="steps of the one long GoSGD run")
    p.add_argument("--long-p", type=float, default=1.0,
                   help="push probability of the long GoSGD run")
    p.add_argument("--long-size", type=int, default=1024,
                   help="float32 parameters of the long GoSGD run")
    p.add_argument("--easgd-steps", type=int, default=20000,
                   help="asynchronous EASGD: local steps per worker")
    p.add_argument("--easgd-tau", type=int, default=1,
                   help="asynchronous EASGD: steps between exchanges")
    p.add_argument("--easgd-max-delay-ms", type=float, default=0.2,
                   help="asynchronous EASGD: most random sleep per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None,
                   help="rank 0 writes the verdicts and every rank's RSS "
                        "samples ([index, bytes]) here")
    p.add_argument("--bound-mb", type=float, default=8.0,
                   help="allowed RSS growth after the warm-up, MiB")
    p.add_argument("--warmup", type=float, default=0.1,
                   help="fraction of steps/runs before the RSS base sample")
    p.add_argument("--sample-every", type=int, default=100,
                   help="sample RSS every k BSP steps")
    p.add_argument("--progress-s", type=float, default=10.0,
                   help="seconds between progress lines")
    p.add_argument("--stall-s", type=float, default=300.0,
                   help="abort as hung after this long without progress "
                        "(0: never)")
    p.add_argument("--hang-report", metavar="DIR", default=None,
                   help="a rank that detects a hang also writes its FAIL "
                        "line to DIR/hang.rank{r}.txt (the abort may cut "
                        "the launcher's output short)")
    # Fault injection for the tests: the soak must be able to fail.
    p.add_argument("--inject-leak", type=int, nargs="?", const=16384,
                   default=0, help=argparse.SUPPRESS)
    p.add_argument("--inject-error", type=int, default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--inject-loss", type=int, default=None,
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.parts = [s for s in args.parts.split(",") if s]
    args.bsp_modes = [s for s in args.bsp_modes.split(",") if s]
    if set(args.parts) - set(PARTS):
        p.error(f"--parts={','.join(args.parts)}: choose from {PARTS}")
    if set(args.bsp_modes) - {"grads", "params"}:
        p.error(f"--bsp-modes={','.join(args.bsp_modes)}: choose from "
                "grads, params")
    for name in ("bsp_steps", "gosgd_runs", "gosgd_steps", "check_every",
                 "sample_every", "long_steps", "long_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.strategy not in ("auto", "ar", "shm", "asa16"):
        p.error(f"--strategy={args.strategy!r}: choose auto, ar, shm or "
                "asa16")
    return args


def main(argv=None):
    """Run the selected parts; returns the exit status (0: every part passed).

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    args = _parse_args(argv)
    ctx = get_context()
    if {"gosgd", "gosgd-long", "easgd"} & set(args.parts) and ctx.size < 2:
        if ctx.rank == 0:
            print("SOAK FAIL gosgd and easgd need at least 2 ranks: launch with "
                  "mpiexec -n 2 or more", flush=True)
        return 2
    if ctx.rank == 0:
        lib = ctx.MPI.Get_library_version().splitlines()[0].strip()
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"soak: {ctx.size} ranks ({ctx.local_size} on this host), {lib}, "
              f"numpy {np.__version__}, RSS from {RSSMeter().source}, "
              f"load average {load}", flush=True)
    watchdog = Watchdog(ctx.comm, args.stall_s, args.hang_report)
    results = []
    if "bsp" in args.parts:
        for mode in args.bsp_modes:
            results.append(soak_bsp(ctx, args, mode, watchdog))
    if "gosgd" in args.parts:
        results.append(soak_gosgd(ctx, args, watchdog))
    if "gosgd-long" in args.parts:
        results.append(soak_gosgd_long(ctx, args, watchdog))
    if "easgd" in args.parts:
        results.append(soak_easgd(ctx, args, watchdog))
    watchdog.stop()
    ok = ctx.comm.bcast(all(r["ok"] for r in results) if ctx.rank == 0
                        else None, root=0)
    if ctx.rank == 0:
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"SOAK {'PASS' if ok else 'FAIL'} load_average_end={load}",
              flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"argv": sys.argv[1:], "ranks": ctx.size,
                           "ok": ok, "parts": results}, f, indent=1,
                          default=float)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
