"""GoSGD: asynchronous push gossip between workers with per-rank weights."""

import numbers

import numpy as np

from tmpi_core.checks import describe_arrays
from tmpi_core.rules.base import Rule, fused_buffer_for, read_params

__all__ = ["GoSGD"]

_TAG_GOSSIP = 7201
_HEADER = 16                 # bytes: weight (float64) and sequence (int64)


class GoSGD(Rule):
    """Gossip SGD (Blot, Picard, Cord & Thome 2016).

    Every rank keeps a weight ``a_i`` (``1/p`` at start). After each local
    step it merges every message that has arrived,
    ``x_i <- (a_i x_i + a_s x_s) / (a_i + a_s)``, ``a_i <- a_i + a_s``, then
    with probability ``p`` picks a peer ``j != i`` uniformly, halves
    ``a_i`` and sends ``(x_i, a_i)`` to it without waiting. Exchanges keep
    ``sum_i a_i = 1`` and ``sum_i a_i x_i`` (messages in flight included).
    :meth:`finalize` delivers every message still in flight, then gives
    every rank the weighted consensus ``sum_i a_i x_i``.

    Args:
        p: probability of a push after each step, in (0, 1].
        seed: seed of the peer/push choices (rank is added); None: random.
        log_messages: also keep ``(dest, seq)`` of every push in ``sent``
            and ``(source, seq)`` of every merge in ``received``, for
            tests. Off by default: the lists grow with every message, which
            over a long training is memory without bound.
            ``messages_sent`` and ``messages_received`` always count.
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.

    Raises:
        ValueError: for ``p`` outside (0, 1]; at start, on every rank, for
            fewer than 2 ranks.

    Example:
        >>> rule = GoSGD(p=0.1)
    """

    name = "gosgd"
    title = "GoSGD"
    lockstep = False        # ranks never wait for each other

    def __init__(self, *, p=0.1, seed=None, log_messages=False, comm=None):
        super().__init__(comm=comm)
        if isinstance(p, bool) or not isinstance(p, numbers.Real) \
                or not 0.0 < float(p) <= 1.0:
            raise ValueError(f"p={p!r} must lie in (0, 1]: the probability "
                             "of a push after each step")
        if seed is not None and (isinstance(seed, bool)
                                 or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"seed={seed!r} must be an integer or None")
        if not isinstance(log_messages, bool):
            raise ValueError(
                f"log_messages={log_messages!r} must be True or False")
        self.p = float(p)
        self.seed = seed
        self.weight = None
        self.log_messages = bool(log_messages)
        self.messages_sent = 0       # pushes from this rank
        self.messages_received = 0   # merges on this rank
        self.sent = []           # (dest, seq) of every push, if logged
        self.received = []       # (source, seq) of every merge, if logged
        self._pending = []       # [request, message buffer] of live sends
        self._free = []          # message buffers ready for reuse

    def config(self):
        """Return the options every rank must share."""
        return dict(super().config(), p=self.p)

    def _on_ready(self):
        self._require_ranks(2, "someone to gossip with")
        seed = None if self.seed is None else self.seed + self.ctx.rank
        self._rng = np.random.default_rng(seed)
        from mpi4py import MPI

        self._MPI = MPI
        self._status = MPI.Status()

    def start(self, params, *, names=None):
        """Check agreement, broadcast rank 0's parameters, reset weights."""
        out = super().start(params, names=names)
        self._x = fused_buffer_for(describe_arrays(params, names))
        self._x.pack(out)
        self._recv = self._message()
        self.weight = 1.0 / self.ctx.size
        self._push_next = self._draw()
        return out

    def _draw(self):
        # The push decision of the coming step, drawn in advance so that
        # wants_params() is a query without side effects.
        return bool(self._rng.random() < self.p)

    def wants_params(self):
        """True when a message has arrived or this step pushes one.

        A query: it draws nothing and receives nothing (a message arriving
        after it is merged by :meth:`end_step` all the same).
        """
        return self._push_next or self._incoming()

    def _incoming(self):
        return self.ctx.comm.Iprobe(source=self._MPI.ANY_SOURCE,
                                    tag=_TAG_GOSSIP)

    def end_step(self, params=None):
        """Merge what arrived, then maybe push (see the class docstring).

        Args:
            params: the parameters, or a function that reads them (called
                only when a message arrived or this step pushes), or
                ``None``: then messages wait for a later step, and a push
                decided for this step raises ``ValueError``.

        Returns:
            the merged parameters (views of a fused buffer) or None.
        """
        push = self._push_next
        self._push_next = self._draw()
        self.step += 1
        if not (push or self._incoming()):
            return None
        params = read_params(params)
        if params is None:
            if push:
                raise ValueError("end_step needs the parameters on a step "
                                 "that pushes (wants_params() is True); "
                                 "pass them, or a function that reads them")
            return None         # merge the messages on a later step
        with self._timer("exchange"):        # never blocks on a peer
            self._x.pack(params)
            self._drain()
            if push:
                self._push()
            self._reap()
        return self._x.views

    def finalize(self, params):
        """Deliver every message in flight, then return the weighted
        consensus on every rank (collective); weights restart at 1/p."""
        self._x.pack(params)
        comm, MPI = self.ctx.comm, self._MPI
        self._deliver_all()
        x = self._x.data
        x *= self.weight
        total = np.array([self.weight], np.float64)
        comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
        comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        self.total_weight = float(total[0])
        x /= total[0]
        self.weight = 1.0 / self.ctx.size
        return self._x.views

    def quiesce(self, params):
        """Deliver every gossip message in flight (collective).

        After it, no message is on the wire, so this rank's parameters and
        weight are its whole state: ``sum_i a_i == 1`` holds exactly as
        stored. Returns the parameters with every received message merged.
        """
        self._ready()
        self._x.pack(params)
        self._deliver_all()
        return self._x.views

    def state_dict(self):
        """Step, weight, the peer-choice generator and the push decision
        already drawn for the next step, for checkpoints (after
        :meth:`quiesce`)."""
        return {"step": self.step, "weight": self.weight,
                "rng": self._rng.bit_generator.state,
                "push_next": self._push_next}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` (after :meth:`start`)."""
        super().load_state_dict(state)
        self.weight = float(state["weight"])
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]
        if "push_next" in state:
            self._push_next = bool(state["push_next"])

    # -- messages -------------------------------------------------------------
    def _deliver_all(self):
        # Receive until every rank has received all that every rank sent.
        comm, MPI = self.ctx.comm, self._MPI
        counts = np.zeros(1, np.int64)
        while True:
            self._drain()
            self._reap()
            counts[0] = self.messages_sent - self.messages_received
            comm.Allreduce(MPI.IN_PLACE, counts, op=MPI.SUM)
            if counts[0] == 0:
                break
        MPI.Request.Waitall([r for r, _ in self._pending])
        self._reap()

    def _message(self):
        nbytes = _HEADER + self._x.nbytes
        return np.zeros(nbytes, np.uint8)

    def _views(self, msg):
        return (msg[:8].view(np.float64), msg[8:16].view(np.int64),
                msg[_HEADER:].view(self._x.data.dtype))

    def _drain(self):
        comm, MPI, status = self.ctx.comm, self._MPI, self._status
        x = self._x.data
        while comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_GOSSIP,
                          status=status):
            source = status.Get_source()
            comm.Recv(self._recv, source=source, tag=_TAG_GOSSIP)
            a_s, seq, x_s = self._views(self._recv)
            a_s = float(a_s[0])
            total = self.weight + a_s
            # x <- (a x + a_s x_s) / (a + a_s) = x + a_s / (a + a_s) (x_s - x),
            # in place, no temporaries. One rounded coefficient: the two of
            # the first form sum to 1 only within float32 rounding, a bias
            # that scaled the consensus by ~1e-4 per million merges.
            x_s -= x
            x_s *= a_s / total
            x += x_s
            self.weight = total
            self.messages_received += 1
            if self.log_messages:
                self.received.append((source, int(seq[0])))

    def _push(self):
        size, rank = self.ctx.size, self.ctx.rank
        peer = int(self._rng.integers(size - 1))
        peer += peer >= rank                   # uniform over j != rank
        self.weight /= 2.0
        msg = self._free.pop() if self._free else self._message()
        a, seq, x = self._views(msg)
        a[0] = self.weight
        seq[0] = self.messages_sent
        np.copyto(x, self._x.data)
        request = self.ctx.comm.Isend(msg, dest=peer, tag=_TAG_GOSSIP)
        self._pending.append([request, msg])
        self.messages_sent += 1
        if self.log_messages:
            self.sent.append((peer, int(seq[0])))

    def _reap(self):
        live = []
        for request, msg in self._pending:
            if request.Test():
                self._free.append(msg)
            else:
                live.append([request, msg])
        self._pending = live
