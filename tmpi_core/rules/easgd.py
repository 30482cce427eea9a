"""EASGD: elastic averaging SGD, asynchronous (server/worker) or synchronous."""

import numbers

import numpy as np

from tmpi_core.checks import describe_arrays
from tmpi_core.exchangers import STRATEGIES, make_exchanger
from tmpi_core.rules.base import (Rule, _positive_int, fused_buffer_for,
                                  read_params)

__all__ = ["EASGD"]

_TAG_PUSH, _TAG_DIFF, _TAG_DONE = 7101, 7102, 7103
_EMPTY = np.empty(0, np.uint8)          # the body of a "done" message


class EASGD(Rule):
    """Elastic averaging SGD (Zhang, Choromanska & LeCun 2015).

    Workers train locally and are pulled towards a center variable ``c``
    every ``tau`` steps with strength ``alpha``; ``beta = p * alpha``.

    * Asynchronous (default; the paper's Algorithm 1, Theano-MPI's
      server/worker form): rank 0 holds ``c`` and does not train. A worker,
      every ``tau`` local steps, sends ``x_i``; the server replies
      ``d = alpha (x_i - c)`` and sets ``c <- c + d``; the worker sets
      ``x_i <- x_i - d``. Workers never wait for each other. ``alpha``
      defaults to ``beta / (p - 1)`` (the number of workers).
    * ``synchronous=True``: every rank trains and holds a replica of ``c``;
      every ``tau`` steps, with one allreduce of ``sum_i x_i``:
      ``x_i <- x_i - alpha (x_i - c)`` and
      ``c <- c + alpha sum_i (x_i - c)``. ``alpha`` defaults to ``beta / p``.

    EAMSGD is EASGD with a (Nesterov) momentum optimizer on each worker.
    The final model is the center: :meth:`finalize` returns it on every rank.

    Args:
        tau: communication period in local steps (paper: 1, 4, 16, 64).
        alpha: moving rate in (0, 1); default ``beta`` / number of workers.
        beta: used when ``alpha`` is None; in (0, 1], paper default 0.9.
        synchronous: the synchronous form instead of server/worker.
        strategy: exchanger for the synchronous allreduce (``'auto'``:
            ``'shm'`` on one host, ``'ar'`` with one rank per host, else
            ``'hier'``; see :class:`BSP`).
        comm: an ``mpi4py.MPI.Comm``; default ``COMM_WORLD``.

    Raises:
        ValueError: for ``tau < 1``, ``alpha`` outside (0, 1), ``beta``
            outside (0, 1], or (at start, on every rank) fewer than 2 ranks.

    Example:
        >>> rule = EASGD(tau=4)                  # rank 0 serves the center
    """

    name = "easgd"
    title = "EASGD"

    def __init__(self, *, tau=1, alpha=None, beta=0.9, synchronous=False,
                 strategy="auto", comm=None):
        tau = _positive_int("tau", tau)
        super().__init__(every=tau, comm=comm)
        if alpha is not None:
            alpha = _real("alpha", alpha)
            if not 0.0 < alpha < 1.0:
                raise ValueError(f"alpha={alpha!r} must lie in (0, 1)")
        beta = _real("beta", beta)
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta={beta!r} must lie in (0, 1]")
        if not isinstance(synchronous, bool):
            raise ValueError(f"synchronous={synchronous!r} must be True or False")
        if not isinstance(strategy, str) or strategy not in STRATEGIES:
            raise ValueError(
                f"strategy={strategy!r} is not a known exchanger; choose one "
                f"of {list(STRATEGIES)}")
        self.tau = tau
        self.alpha_option = alpha
        self.beta = beta
        self.synchronous = synchronous
        self.strategy = strategy
        self.alpha = None
        self.exchanges = 0
        self._served = False
        self._work = None

    def config(self):
        """Return the options every rank must share."""
        return dict(super().config(), tau=self.tau, alpha=self.alpha_option,
                    beta=self.beta, synchronous=self.synchronous,
                    strategy=self.strategy)

    @property
    def role(self):
        """``'server'`` (rank 0, asynchronous), ``'worker'`` or ``'peer'``."""
        if self.synchronous:
            return "peer"
        return "server" if self.context.rank == 0 else "worker"

    @property
    def lockstep(self):
        """Synchronous EASGD meets every ``tau`` steps in an allreduce; the
        asynchronous workers never wait for each other."""
        return self.synchronous

    def _on_close(self):
        self._work = None

    def _on_ready(self):
        self._require_ranks(2, "a center and a worker")
        p = self.ctx.size
        workers = p if self.synchronous else p - 1
        self.alpha = (self.alpha_option if self.alpha_option is not None
                      else self.beta / workers)
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(
                f"alpha = beta / workers = {self.alpha} must lie in (0, 1)")
        if self.synchronous:
            self._exchanger = make_exchanger(self.strategy, self.ctx.comm)

    def start(self, params, *, names=None):
        """Check agreement, broadcast rank 0's parameters; they are the
        initial center (see :class:`Rule`)."""
        out = super().start(params, names=names)
        spec = describe_arrays(params, names)
        self._center = fused_buffer_for(spec)
        self._center.pack(out)
        self._local = fused_buffer_for(spec)
        self._work = fused_buffer_for(     # what the exchanger reduces
            spec, self._work,
            allocate=self._exchanger.allocate if self.synchronous else None)
        self.elastic_total = np.zeros_like(self._center.data)
        self._served = False            # a new round of serving (new fit)
        return out

    def wants_params(self):
        """True every ``tau``-th local step (never on the server)."""
        return self.role != "server" and (self.step + 1) % self.tau == 0

    def end_step(self, params=None):
        """Count a local step; every ``tau`` steps, the elastic exchange.

        Returns:
            the worker's new parameters (views of a fused buffer) or None.
        """
        exchange = self.wants_params()
        self.step += 1
        if not exchange:
            return None
        params = read_params(params)
        if params is None:
            raise ValueError("end_step needs the parameters on an exchange "
                             "step; pass them, or a function that reads them")
        if self.synchronous:
            timer = self._timer("collective", "elastic exchange",
                                self.step - 1, self._work)
        else:
            timer = self._timer("exchange")
        with timer:
            self._exchange(params)
        self.exchanges += 1
        return self._local.views

    def _exchange(self, params):
        """The elastic exchange of :meth:`end_step` (timed there)."""
        self._local.pack(params)
        x, d = self._local.data, self._work.data
        if self.synchronous:
            c = self._center.data
            np.copyto(d, x)
            self._exchanger.allreduce_sum(self._work)      # d = sum_i x_i
            # x_i <- x_i - alpha (x_i - c)  ==  c + (1 - alpha)(x_i - c)
            np.subtract(x, c, out=x)
            np.multiply(x, 1.0 - self.alpha, out=x)
            np.add(x, c, out=x)
            # c <- c + alpha (sum_i x_i - p c)  ==  (1 - alpha p) c + alpha S
            np.multiply(c, 1.0 - self.alpha * self.ctx.size, out=c)
            np.multiply(d, self.alpha, out=d)
            np.add(c, d, out=c)
        else:
            comm = self.ctx.comm
            # the round trip to the server
            with self._timer("blocked", "round trip to the server",
                             self.step - 1, self._local):
                comm.Send(x, dest=0, tag=_TAG_PUSH)
                comm.Recv(d, source=0, tag=_TAG_DIFF)
            np.subtract(x, d, out=x)
            np.add(self.elastic_total, d, out=self.elastic_total)

    def serve(self, *, on_exchange=None):
        """Run the center on the server until every worker has finished.

        Args:
            on_exchange: optional ``f(exchanges, center_views)`` called after
                every served exchange (the adapters checkpoint the center
                from it).

        Returns:
            the center (views of a fused buffer). On a worker or a peer this
            returns at once with ``None``.
        """
        if self.role != "server" or self._served:
            return None
        from mpi4py import MPI

        comm, status = self.ctx.comm, MPI.Status()
        x, d, c = self._local.data, self._work.data, self._center.data
        active = self.ctx.size - 1
        while active:
            comm.Probe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
            source, tag = status.Get_source(), status.Get_tag()
            if tag == _TAG_PUSH:
                comm.Recv(x, source=source, tag=_TAG_PUSH)
                np.subtract(x, c, out=d)
                np.multiply(d, self.alpha, out=d)
                np.add(c, d, out=c)
                np.add(self.elastic_total, d, out=self.elastic_total)
                comm.Send(d, dest=source, tag=_TAG_DIFF)
                self.exchanges += 1
                if on_exchange is not None:
                    on_exchange(self.exchanges, self._center.views)
            elif tag == _TAG_DONE:
                comm.Recv(_EMPTY, source=source, tag=_TAG_DONE)
                active -= 1
            else:  # pragma: no cover - another library's message
                raise RuntimeError(
                    f"EASGD server got an unexpected message (tag {tag}) "
                    f"from rank {source}")
        self._served = True
        return self._center.views

    def finalize(self, params):
        """Every rank's final model: the center.

        Asynchronous: a worker tells the server it is done; the server
        serves until all are (if it was not already serving), then the
        center is broadcast. Collective.
        """
        if not self.synchronous:
            if self.role == "worker":
                self.ctx.comm.Send(_EMPTY, dest=0, tag=_TAG_DONE)
            else:
                self.serve()
            # not bounded: a worker that is done waits here, legitimately,
            # for the slowest worker to finish training
            self.ctx.bcast_array(self._center.data, root=0)
        return self._center.views

    @property
    def shared_state(self):
        """The synchronous center is equal on every rank; the asynchronous
        one lives on the server alone, which checkpoints by itself."""
        return ("center",) if self.synchronous else ()

    def state_dict(self):
        """Step and exchange counters and the center, for checkpoints.

        A worker of the asynchronous form holds no center of its own (its
        copy is stale), so it saves only its counters.
        """
        state = {"step": self.step, "exchanges": self.exchanges}
        if self.role != "worker":
            state["center"] = self._center.data.copy()
        return state

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` (after :meth:`start`)."""
        super().load_state_dict(state)
        self.exchanges = int(state.get("exchanges", 0))
        if "center" in state:
            center = np.asarray(state["center"])
            if center.shape != self._center.data.shape:
                raise ValueError(
                    f"the checkpoint's EASGD center has {center.size} values, "
                    f"this model {self._center.data.size}")
            np.copyto(self._center.data, center)


def _real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} must be a number")
    return float(value)
