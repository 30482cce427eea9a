#!/usr/bin/env python3
"""Emulated hosts on one machine, for MPI runs across a real (virtual) link.

Each host is a Linux network namespace ``tmpi{k}-h1`` .. ``tmpi{k}-hN``
(``k``: the bed's id, so that two test runs on one machine do not meet)
with its own host name, joined to a bridge ``tmpi{k}-br`` in the root
namespace by a veth pair. Addresses come only from the benchmarking range
198.18.0.0/15 (hosts 198.18.k.1 .. 198.18.k.N, the bridge 198.18.k.254, all
/24), so nothing leaves the namespaces and the bridge. Each link may be
limited by a token bucket (``tc qdisc tbf``) in both directions.

MPICH's hydra places the ranks through a launcher script that runs each
proxy inside its host's namespace under a fresh UTS namespace
(``ip netns exec tmpi0-h1 unshare --uts``), so every host is a node of its
own.
UCX, the wheel's network module, is restricted to TCP on the host's link
(``UCX_TLS=tcp,self``, ``UCX_NET_DEVICES=tmpi0``): bytes between hosts cross
the veths, where :meth:`HostBed.link_bytes` counts them; ranks on one host
still share memory through MPICH.

Python::

    with HostBed(2, rate="1gbit") as bed:
        before = bed.link_bytes()
        subprocess.run([mpiexec, *bed.mpiexec_args(ppn=2), "-n", "4", ...])
        moved = bed.bytes_since(before)

Command line (root, iproute2)::

    python tests/hosts.py up 2 --rate 1gbit
    python tests/hosts.py run -n 2 -ppn 2 -- python -c "import socket; ..."
    python tests/hosts.py status
    python tests/hosts.py down

Tests use :func:`hostbed` (a pytest fixture factory) and :func:`run_on_hosts`
(``tests/mpirun.run_mpi`` with the ranks placed on the bed). See
``docs/HOSTS.md``.
"""

import argparse
import atexit
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PREFIX = "tmpi"
IFACE = f"{PREFIX}0"                  # the link's name inside every host
MAX_HOSTS = 4
MAX_BEDS = 16                         # beds that may be up at once
MARK = "# tmpi-bed"                   # tags the /etc/hosts lines we add
ETC_HOSTS = "/etc/hosts"
STATE_ROOT = os.path.join(tempfile.gettempdir(), f"{PREFIX}-hostbeds")

__all__ = ["HostBed", "hostbed", "run_on_hosts", "run_on_hosts_interrupted",
           "run_on_hosts_json", "teardown_stale", "unavailable_reason"]

# hydra calls "LAUNCHER [ssh options] HOST PROXY-COMMAND..." as it would ssh;
# like sshd, run the command through a shell, here inside the host's
# namespace and under its own host name.
_LAUNCH_SCRIPT = """#!/bin/sh
# Written by tests/hosts.py: hydra's launcher-exec for the emulated hosts.
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
host=$1; shift
exec ip netns exec "$host" unshare --uts sh -c 'hostname "$0" && exec sh -c "$1"' "$host" "$*"
"""

_ACTIVE = []                          # beds this process brought up


def _bridge(k):
    return f"{PREFIX}{k}-br"


def _host(k, i):
    return f"{PREFIX}{k}-h{i}"        # namespace, host name and DNS name


def _veth(k, i):
    return f"{PREFIX}{k}-h{i}-br"     # the bridge's side, in the root namespace


def _subnet(k):
    return f"198.18.{k}"              # inside 198.18.0.0/15, nothing else


def _state(k):
    return os.path.join(STATE_ROOT, str(k))


def _run(*cmd, check=True):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc


def _links():
    return set(os.listdir("/sys/class/net"))


def _namespaces():
    proc = _run("ip", "netns", "list", check=False)
    return sorted(line.split()[0] for line in proc.stdout.splitlines()
                  if line.startswith(PREFIX))


def _bed_ids_in_use():
    """Ids of beds with anything in the kernel (namespaces, links)."""
    ids = set()
    for name in _namespaces() + sorted(_links()):
        m = re.fullmatch(rf"{PREFIX}(\d+)-(h\d+|h\d+-br|br)", name)
        if m:
            ids.add(int(m.group(1)))
    return ids


class _Lock:
    """An exclusive lock over every bed's bookkeeping (ids, /etc/hosts)."""

    def __enter__(self):
        os.makedirs(STATE_ROOT, exist_ok=True)
        self._f = open(os.path.join(STATE_ROOT, ".lock"), "w")
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def unavailable_reason():
    """Why the bed cannot run here, or ``None`` when it can.

    Returns:
        One sentence (not root, a missing tool, no network namespaces), fit
        for ``pytest.skip``.
    """
    if os.geteuid() != 0:
        return "the emulated hosts need root (network namespaces)"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return (f"the emulated hosts need `{tool}` (apt-get install "
                    f"{'util-linux' if tool == 'unshare' else 'iproute2'})")
    if not os.path.exists("/proc/self/ns/net"):
        return "this kernel has no network namespaces"
    probe = _run("unshare", "--net", "--uts", "true", check=False)
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()}"
    return None


class HostBed:
    """``n`` emulated hosts joined by one bridge, optionally rate-limited.

    Several beds may be up at once (two test runs on one machine): each
    gets its own id ``k``, names ``tmpi{k}-h1`` .. and subnet
    ``198.18.{k}.0/24``. A bed belongs to the process that brought it up;
    when that process is gone, the next :meth:`up` (or ``hosts.py down``)
    removes what it left. :meth:`up` is idempotent, :meth:`down` too.

    Args:
        n: number of hosts, 2 to 4.
        rate: token-bucket rate of every link, each direction, in ``tc``'s
            words (``"1gbit"``, ``"10gbit"``); ``None`` leaves links
            unlimited.

    Raises:
        ValueError: on a bad ``n`` or ``rate``.

    Example::

        with HostBed(2, rate="1gbit") as bed:
            cmd = [mpiexec, *bed.mpiexec_args(ppn=2), "-n", "4", ...]
    """

    def __init__(self, n=2, rate=None):
        if not isinstance(n, int) or isinstance(n, bool) \
                or not 2 <= n <= MAX_HOSTS:
            raise ValueError(f"n={n!r} must be an integer from 2 to "
                             f"{MAX_HOSTS}")
        if rate is not None:
            _rate_bytes(rate)
        self.n = n
        self.rate = rate
        self.id = None
        self._previous_handlers = {}

    @classmethod
    def attach(cls):
        """The bed brought up from the command line (``hosts.py up``), or
        ``None``."""
        for k in _state_ids():
            if _owner(k) == 0:
                bed = cls(_recorded_n(k))
                bed.id = k
                return bed
        return None

    @property
    def hosts(self):
        """The host names, ``tmpi{k}-h1`` ..; the bed must be up."""
        return [_host(self._k(), i) for i in range(1, self.n + 1)]

    @property
    def bridge(self):
        """The bridge's name in the root namespace."""
        return _bridge(self._k())

    # -- life cycle ------------------------------------------------------

    def up(self, *, persistent=False):
        """Create what is missing: bridge, namespaces, veths, addresses,
        qdiscs, ``/etc/hosts`` lines and the launcher script.

        Args:
            persistent: the bed outlives this process (``hosts.py up``)
                until ``hosts.py down``.

        Returns:
            self.

        Raises:
            RuntimeError: when the bed cannot run here (see
                :func:`unavailable_reason`) or a command fails; whatever was
                created is removed again first.
        """
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        with _Lock():
            teardown_stale(locked=True)
            if self.id is None:
                self.id = _allocate(0 if persistent else os.getpid(), self.n)
            try:
                self._up()
            except BaseException:
                _teardown(self.id)
                self.id = None
                raise
        if not persistent and self not in _ACTIVE:
            _ACTIVE.append(self)
            atexit.register(self.down)
        return self

    def _up(self):
        k = self.id
        with open(os.path.join(_state(k), "n"), "w") as f:
            f.write(str(self.n))
        for i in range(self.n + 1, MAX_HOSTS + 1):   # a larger earlier bed
            _remove_host(k, i)
        links = _links()
        bridge = _bridge(k)
        if bridge not in links:
            _run("ip", "link", "add", bridge, "type", "bridge")
        _run("ip", "addr", "replace", f"{_subnet(k)}.254/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        namespaces = _namespaces()
        for i, host in enumerate(self.hosts, start=1):
            veth = _veth(k, i)
            if host not in namespaces:
                _run("ip", "netns", "add", host)
            if veth not in links:
                _run("ip", "link", "add", veth, "type", "veth", "peer",
                     "name", IFACE, "netns", host)
            _run("ip", "link", "set", veth, "master", bridge, "up")
            ns = ("ip", "netns", "exec", host)
            _run(*ns, "ip", "link", "set", "lo", "up")
            _run(*ns, "ip", "addr", "replace", f"{_subnet(k)}.{i}/24", "dev",
                 IFACE)
            _run(*ns, "ip", "link", "set", IFACE, "up")
        self.set_rate(self.rate)
        _edit_etc_hosts(k, [f"{_subnet(k)}.{i} {h}"
                            for i, h in enumerate(self.hosts, start=1)])
        launcher = self._launcher()
        with open(launcher + ".tmp", "w") as f:
            f.write(_LAUNCH_SCRIPT)
        os.chmod(launcher + ".tmp", 0o755)
        os.replace(launcher + ".tmp", launcher)

    def down(self):
        """Remove everything of this bed; nothing if it is not up.

        Returns:
            list of what was removed, for the record.
        """
        if self in _ACTIVE:
            _ACTIVE.remove(self)
            atexit.unregister(self.down)
        if self.id is None:
            return []
        with _Lock():
            removed = _teardown(self.id)
        self.id = None
        return removed

    def __enter__(self):
        self.up()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._previous_handlers[sig] = signal.signal(sig, _exit_on_signal)
        return self

    def __exit__(self, *exc):
        try:
            self.down()
        finally:
            for sig, handler in self._previous_handlers.items():
                signal.signal(sig, handler)
            self._previous_handlers.clear()

    # -- what a launch needs ---------------------------------------------

    def env(self):
        """Environment every rank needs so that bytes between hosts cross
        the emulated links (UCX over TCP on ``tmpi0``, no shared memory
        through UCX).

        Returns:
            dict of variable name to value.
        """
        return {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": IFACE}

    def mpiexec_args(self, ppn, hosts=None):
        """``mpiexec`` arguments that place ``ppn`` ranks on each host.

        Put ``-n hosts*ppn`` and the program after them. :meth:`env` is
        included as ``-genv`` pairs.

        Args:
            ppn: ranks per host.
            hosts: how many of the bed's hosts to use (default all).

        Returns:
            list of strings.
        """
        hosts = self.n if hosts is None else hosts
        if not 1 <= hosts <= self.n:
            raise ValueError(f"hosts={hosts!r} must lie in [1, {self.n}]")
        args = ["-hosts", ",".join(self.hosts[:hosts]), "-ppn", str(ppn),
                "-launcher", "ssh", "-launcher-exec", self._launcher(),
                "-iface", self.bridge]
        for key, value in self.env().items():
            args += ["-genv", key, value]
        return args

    # -- the links ---------------------------------------------------------

    def set_rate(self, rate):
        """Limit every link to ``rate`` each way (``None``: no limit).

        Args:
            rate: ``tc`` rate such as ``"1gbit"``, or ``None``.
        """
        burst = None if rate is None else max(_rate_bytes(rate) // 100,
                                              256 * 1024)
        for i, host in enumerate(self.hosts, start=1):
            for prefix, dev in ((), _veth(self.id, i)), \
                    (("ip", "netns", "exec", host), IFACE):
                if rate is None:
                    _run(*prefix, "tc", "qdisc", "del", "dev", dev, "root",
                         check=False)
                else:
                    _run(*prefix, "tc", "qdisc", "replace", "dev", dev,
                         "root", "tbf", "rate", rate, "burst", str(burst),
                         "latency", "100ms")
        self.rate = rate

    def set_link(self, host, up):
        """Take the link of ``host`` down or bring it back up.

        The bridge's side of the veth is switched, so the host sees its
        carrier go.

        Args:
            host: a host name or its 1-based index.
            up: True to bring the link up, False to take it down.
        """
        index = self._index(host)
        _run("ip", "link", "set", _veth(self.id, index),
             "up" if up else "down")
        if up:
            self._wait_until_carried(index)

    def _wait_until_carried(self, index, timeout=10.0):
        # Back up is not yet carrying: the veth's state comes up a moment
        # later, and the hosts' neighbour caches still hold the addresses
        # that failed while it was down ("No route to host" for a few
        # seconds). Wait for the state, then forget the failures.
        state = f"/sys/class/net/{_veth(self.id, index)}/operstate"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(state) as f:
                if f.read().strip() == "up":
                    break
            time.sleep(0.05)
        for name in self.hosts:
            _run("ip", "netns", "exec", name, "ip", "neigh", "flush", "all",
                 check=False)

    def link_bytes(self):
        """Bytes each host has sent and received over its link so far.

        Read from the counters of the bridge's side of each veth (what the
        host sends, the bridge receives).

        Returns:
            dict host name -> ``{"tx": bytes sent, "rx": bytes received}``.
        """
        return {host: _counters(self.id, i)
                for i, host in enumerate(self.hosts, start=1)}

    def bytes_since(self, before):
        """Per host, the bytes sent and received since ``before`` (an
        earlier :meth:`link_bytes`)."""
        now = self.link_bytes()
        return {h: {k: now[h][k] - before[h][k] for k in ("tx", "rx")}
                for h in now}

    def pids(self, host=None):
        """Processes running inside the hosts (all, or one host's).

        Returns:
            sorted list of process ids.
        """
        hosts = self.hosts if host is None \
            else [self.hosts[self._index(host) - 1]]
        return sorted(p for h in hosts for p in _ns_pids(h))

    def kill_all(self):
        """SIGKILL every process inside the hosts.

        Returns:
            how many there were.
        """
        return sum(_kill_ns(h) for h in self.hosts)

    def _k(self):
        if self.id is None:
            raise RuntimeError("the bed is not up; call up() first (or use "
                               "it as a context manager)")
        return self.id

    def _launcher(self):
        return os.path.join(_state(self._k()), "launch")

    def _index(self, host):
        if isinstance(host, int) and not isinstance(host, bool):
            i = host
        elif host in self.hosts:
            i = self.hosts.index(host) + 1
        else:
            raise ValueError(f"host={host!r} is not one of {self.hosts}")
        if not 1 <= i <= self.n:
            raise ValueError(f"host={host!r} must lie in [1, {self.n}]")
        return i


def _rate_bytes(rate):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)(bit|bps)", str(rate).lower())
    if not m:
        raise ValueError(f"rate={rate!r} must be a tc rate such as '1gbit' "
                         "or '100mbit'")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    value = float(m.group(1)) * scale
    return int(value / 8 if m.group(3) == "bit" else value)


def _counters(k, i):
    stats = f"/sys/class/net/{_veth(k, i)}/statistics"
    with open(f"{stats}/rx_bytes") as f:
        tx = int(f.read())
    with open(f"{stats}/tx_bytes") as f:
        rx = int(f.read())
    return {"tx": tx, "rx": rx}


def _state_ids():
    try:
        names = os.listdir(STATE_ROOT)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def _owner(k):
    """The owning process id of bed ``k``, 0 if persistent, None if
    unknown."""
    try:
        with open(os.path.join(_state(k), "owner")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _recorded_n(k):
    try:
        with open(os.path.join(_state(k), "n")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 2


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _allocate(owner, n):
    used = set(_state_ids()) | _bed_ids_in_use()
    for k in range(MAX_BEDS):
        if k not in used:
            os.makedirs(_state(k))
            with open(os.path.join(_state(k), "owner"), "w") as f:
                f.write(str(owner))
            return k
    raise RuntimeError(f"{MAX_BEDS} beds are up already; `python "
                       "tests/hosts.py down --all` removes them")


def _ns_pids(host):
    proc = _run("ip", "netns", "pids", host, check=False)
    return [int(p) for p in proc.stdout.split()]


def _kill_ns(host):
    pids = _ns_pids(host)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while _ns_pids(host) and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(pids)


def _remove_host(k, i):
    host = _host(k, i)
    if host in _namespaces():
        _kill_ns(host)
        _run("ip", "netns", "del", host, check=False)
    if _veth(k, i) in _links():
        _run("ip", "link", "del", _veth(k, i), check=False)


def _edit_etc_hosts(k, entries):
    """Replace bed ``k``'s lines of /etc/hosts by ``entries`` (the caller
    holds the lock). Returns how many lines were removed."""
    tag = f"{MARK} {k}"
    with open(ETC_HOSTS) as f:
        lines = f.read().splitlines()
    kept = [line for line in lines if not line.endswith(tag)]
    new = kept + [f"{entry} {tag}" for entry in entries]
    if new != lines:
        # /etc/hosts is often a bind mount (containers): rewrite in place.
        with open(ETC_HOSTS, "r+") as f:
            f.write("\n".join(new) + "\n")
            f.truncate()
    return len(lines) - len(kept)


def _teardown(k):
    """Remove every trace of bed ``k`` (the caller holds the lock)."""
    removed = []
    for host in _namespaces():
        if re.fullmatch(rf"{PREFIX}{k}-h\d+", host):
            n = _kill_ns(host)
            _run("ip", "netns", "del", host, check=False)
            removed.append(f"namespace {host}" + (f" ({n} processes killed)"
                                                  if n else ""))
    for link in sorted(_links()):
        if re.fullmatch(rf"{PREFIX}{k}-h\d+-br", link):
            _run("ip", "link", "del", link, check=False)
            removed.append(f"veth {link}")
    if _bridge(k) in _links():
        _run("ip", "link", "del", _bridge(k), check=False)
        removed.append(f"bridge {_bridge(k)}")
    lines = _edit_etc_hosts(k, [])
    if lines:
        removed.append(f"{lines} {ETC_HOSTS} lines")
    if os.path.isdir(_state(k)):
        shutil.rmtree(_state(k), ignore_errors=True)
    return removed


def teardown_stale(*, everything=False, locked=False):
    """Remove the beds whose owner has gone (a crashed or killed run), or
    with ``everything`` every bed, live or persistent, on this machine.

    Args:
        everything: also beds of live processes and ``hosts.py up``'s.
        locked: the caller holds the lock already.

    Returns:
        list of what was removed, for the record.
    """
    if not locked:
        with _Lock():
            return teardown_stale(everything=everything, locked=True)
    removed = []
    for k in sorted(set(_state_ids()) | _bed_ids_in_use()):
        owner = _owner(k)
        stale = owner is None or (owner != 0 and not _alive(owner))
        if everything or stale:
            removed += _teardown(k)
    return removed


def _exit_on_signal(signum, frame):
    for bed in list(_ACTIVE):
        bed.down()
    raise SystemExit(128 + signum)


def status():
    """What beds are up now, in a few lines of text."""
    lines = []
    for k in sorted(set(_state_ids()) | _bed_ids_in_use()):
        owner = _owner(k)
        who = {0: "hosts.py up", None: "no owner (stale)"}.get(
            owner, f"pid {owner}" + ("" if _alive(owner) else " (gone)"))
        lines.append(f"bed {k}: bridge {_bridge(k)} "
                     f"{'up' if _bridge(k) in _links() else 'absent'}, "
                     f"owner {who}")
        for host in _namespaces():
            if not re.fullmatch(rf"{PREFIX}{k}-h\d+", host):
                continue
            i = int(host.rsplit("h", 1)[1])
            qdisc = _run("ip", "netns", "exec", host, "tc", "qdisc", "show",
                         "dev", IFACE, check=False).stdout.split()
            try:
                counts = _counters(k, i)
            except OSError:
                counts = {"tx": "?", "rx": "?"}
            lines.append(f"  {host}: {_subnet(k)}.{i} processes="
                         f"{len(_ns_pids(host))} tx={counts['tx']} "
                         f"rx={counts['rx']} qdisc="
                         f"{' '.join(qdisc[1:2] + qdisc[6:8]) or '-'}")
    return "\n".join(lines) or "no bed is up"


# -- pytest and tests/mpirun -------------------------------------------------

def hostbed(n=2, rate=None, scope="module"):
    """A pytest fixture that brings up ``HostBed(n, rate)`` once per
    ``scope`` and always tears it down; it skips, with one reason, where the
    bed cannot run.

    Example::

        bed = hostbed(2)           # at module level of a test file

        def test_x(bed): ...
    """
    import pytest

    @pytest.fixture(scope=scope)
    def _bed():
        reason = unavailable_reason()
        if reason:
            pytest.skip(reason)
        with HostBed(n, rate) as bed:
            yield bed

    return _bed


def _default_bed(hosts):
    """The newest bed of this process with enough hosts, else the one
    ``hosts.py up`` brought up."""
    for bed in reversed(_ACTIVE):
        if bed.n >= hosts:
            return bed
    bed = HostBed.attach()
    if bed is None or bed.n < hosts:
        raise RuntimeError(f"no bed of {hosts} hosts is up; bring one up "
                           "first (HostBed, or `python tests/hosts.py up "
                           f"{hosts}`)")
    return bed


def _launch_args(bed, hosts, ppn):
    bed = _default_bed(hosts) if bed is None else bed
    missing = [h for h in bed.hosts[:hosts] if h not in _namespaces()]
    if missing:
        raise RuntimeError(f"hosts {missing} are not up; bring the bed up "
                           "first (HostBed, or `python tests/hosts.py up`)")
    return bed, bed.mpiexec_args(ppn, hosts)


def _sweep(bed, grace=5.0):
    """Kill what a run left inside the hosts after ``grace`` seconds to end
    on its own (the launcher can return before the last proxy has).

    Returns:
        list of ``"pid command line"`` of what was left.
    """
    deadline = time.monotonic() + grace
    while bed.pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = []
    for pid in bed.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        left.append(f"{pid} {cmd.strip()[:200]}")
    if left:
        bed.kill_all()
    return left


def run_on_hosts(script, *args, hosts=2, ppn=2, bed=None, check=True,
                 **kwargs):
    """``tests/mpirun.run_mpi`` with ``ppn`` ranks on each of ``hosts``
    emulated hosts.

    Args:
        script: file name under ``tests/mpi`` or a path.
        *args: the script's command-line arguments.
        hosts: number of hosts used.
        ppn: ranks per host.
        bed: the :class:`HostBed` (default: the newest this process
            brought up, else the one ``hosts.py up`` brought up).
        check: assert a zero exit status, and that no process was left in
            the hosts.
        **kwargs: ``timeout``, ``env`` as for ``run_mpi``.

    Returns:
        subprocess.CompletedProcess; ``.leftover`` lists what still ran
        inside the hosts 5 s after the launcher ended (``"pid command
        line"``; then killed).
    """
    from mpirun import run_mpi

    bed, launch = _launch_args(bed, hosts, ppn)
    try:
        proc = run_mpi(script, hosts * ppn, *args, check=check,
                       mpiexec_args=launch, **kwargs)
    finally:
        leftover = _sweep(bed)
    proc.leftover = leftover
    if check:
        assert not leftover, f"processes left in the hosts: {leftover}"
    return proc


def run_on_hosts_json(script, tmp_path, *args, hosts=2, ppn=2, **kwargs):
    """``tests/mpirun.run_mpi_json`` on the emulated hosts.

    Returns:
        list of the ranks' results, in rank order.
    """
    from mpirun import read_rank_json

    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    run_on_hosts(script, "--out", out, *args, hosts=hosts, ppn=ppn, **kwargs)
    return read_rank_json(out, hosts * ppn)


def run_on_hosts_interrupted(script, marker, *args, hosts=2, ppn=2, bed=None,
                             **kwargs):
    """``tests/mpirun.run_mpi_interrupted`` on the emulated hosts: Ctrl-C
    the launcher once ``marker`` exists.

    Returns:
        subprocess.CompletedProcess, with ``.leftover`` as in
        :func:`run_on_hosts`.
    """
    from mpirun import run_mpi_interrupted

    bed, launch = _launch_args(bed, hosts, ppn)
    try:
        proc = run_mpi_interrupted(script, hosts * ppn, marker, *args,
                                   mpiexec_args=launch, **kwargs)
    finally:
        leftover = _sweep(bed)
    proc.leftover = leftover
    return proc


# -- command line ------------------------------------------------------------

def _main(argv=None):
    parser = argparse.ArgumentParser(
        prog="hosts.py", description="Emulated hosts for MPI runs (root).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="bring up N hosts (idempotent)")
    p_up.add_argument("n", type=int, nargs="?", default=2)
    p_up.add_argument("--rate", default=None,
                      help="limit each link, e.g. 1gbit (default: none)")
    p_down = sub.add_parser("down", help="remove the bed `up` brought up "
                            "and what crashed runs left")
    p_down.add_argument("--all", action="store_true",
                        help="also beds that live test runs hold")
    sub.add_parser("status", help="show what is up")
    p_run = sub.add_parser("run", help="run a command on the hosts through "
                           "the venv's mpiexec")
    p_run.add_argument("-n", type=int, default=2, help="hosts")
    p_run.add_argument("-ppn", type=int, default=1, help="ranks per host")
    p_run.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "up":
        bed = HostBed.attach()
        if bed is not None and bed.n != args.n:
            bed.down()
            bed = None
        bed = bed or HostBed(args.n)
        bed.rate = args.rate
        bed.up(persistent=True)
        print(f"up: {', '.join(bed.hosts)} on {bed.bridge}"
              f" rate={args.rate or 'unlimited'}")
        print(f"mpiexec {' '.join(bed.mpiexec_args(1))} -n {args.n} ...")
    elif args.command == "down":
        bed = HostBed.attach()
        removed = bed.down() if bed is not None else []
        removed += teardown_stale(everything=args.all)
        print("removed: " + (", ".join(removed) or "nothing"))
    elif args.command == "status":
        print(status())
    else:
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("run needs a command after --")
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from mpirun import mpiexec

        bed, launch = _launch_args(None, args.n, args.ppn)
        full = [mpiexec(), *launch, "-n", str(args.n * args.ppn), *cmd]
        try:
            return subprocess.call(full)
        finally:
            _sweep(bed)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
