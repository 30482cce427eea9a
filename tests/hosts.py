#!/usr/bin/env python3
"""Emulated hosts on one machine, for MPI runs across a real (virtual) link.

Each host is a Linux network namespace ``tmpi-h1`` .. ``tmpi-hN`` with its
own host name, joined to a bridge ``tmpi-br`` in the root namespace by a
veth pair. Addresses come only from the benchmarking range 198.18.0.0/15
(hosts 198.18.0.1 .. 198.18.0.N, the bridge 198.18.0.254, all /24), so
nothing leaves the namespaces and the bridge. Each link may be limited by a
token bucket (``tc qdisc tbf``) in both directions.

MPICH's hydra places the ranks through a launcher script that runs each
proxy inside its host's namespace under a fresh UTS namespace
(``ip netns exec tmpi-h1 unshare --uts``), so every host is a node of its own.
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
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PREFIX = "tmpi"
BRIDGE = f"{PREFIX}-br"
IFACE = f"{PREFIX}0"                  # the link's name inside every host
SUBNET = "198.18.0"                   # inside 198.18.0.0/15, nothing else
BRIDGE_ADDR = f"{SUBNET}.254"
MARK = "# tmpi-hostbed"               # tags the /etc/hosts lines we add
ETC_HOSTS = "/etc/hosts"
MAX_HOSTS = 4
STATE_DIR = os.path.join(tempfile.gettempdir(), f"{PREFIX}-hostbed")
LAUNCHER = os.path.join(STATE_DIR, "launch")

__all__ = ["HostBed", "host_name", "hostbed", "run_on_hosts",
           "run_on_hosts_interrupted", "run_on_hosts_json", "teardown",
           "unavailable_reason"]

# hydra calls "LAUNCHER [ssh options] HOST PROXY-COMMAND..." as it would ssh;
# like sshd, run the command through a shell, here inside the host's
# namespace and under its own host name.
_LAUNCH_SCRIPT = """#!/bin/sh
# Written by tests/hosts.py: hydra's launcher-exec for the emulated hosts.
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
host=$1; shift
exec ip netns exec "$host" unshare --uts sh -c 'hostname "$0" && exec sh -c "$1"' "$host" "$*"
"""


def host_name(i):
    """The name of host ``i`` (1-based): namespace, host name and DNS name."""
    return f"{PREFIX}-h{i}"


def _veth(i):
    return f"{PREFIX}-h{i}-br"        # the bridge's side, in the root namespace


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
    names = [line.split()[0] for line in proc.stdout.splitlines() if line]
    return sorted(n for n in names if re.fullmatch(rf"{PREFIX}-h\d+", n))


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

    Bringing the bed up is idempotent, and so is :meth:`down`, which also
    removes what a crashed earlier run left (found by name). Use it as a
    context manager, or call :meth:`up` and :meth:`down` yourself.

    Args:
        n: number of hosts, 2 to 4.
        rate: token-bucket rate of every link, each direction, in ``tc``'s
            words (``"1gbit"``, ``"10gbit"``); ``None`` leaves links
            unlimited.

    Raises:
        ValueError: on a bad ``n`` or ``rate``.
    """

    def __init__(self, n=2, rate=None):
        if not isinstance(n, int) or not 2 <= n <= MAX_HOSTS:
            raise ValueError(f"n={n!r} must be an integer from 2 to "
                             f"{MAX_HOSTS}")
        if rate is not None:
            _rate_bytes(rate)
        self.n = n
        self.rate = rate
        self.hosts = [host_name(i) for i in range(1, n + 1)]
        self._previous_handlers = {}

    # -- life cycle ------------------------------------------------------

    def up(self):
        """Create what is missing: bridge, namespaces, veths, addresses,
        qdiscs, ``/etc/hosts`` lines and the launcher script.

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
        try:
            self._up()
        except BaseException:
            teardown()
            raise
        return self

    def _up(self):
        for i in range(self.n + 1, MAX_HOSTS + 1):   # a larger earlier bed
            _remove_host(i)
        links = _links()
        if BRIDGE not in links:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "replace", f"{BRIDGE_ADDR}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        namespaces = _namespaces()
        for i, host in enumerate(self.hosts, start=1):
            veth = _veth(i)
            if host not in namespaces:
                _run("ip", "netns", "add", host)
            if veth not in links:
                _run("ip", "link", "add", veth, "type", "veth", "peer",
                     "name", IFACE, "netns", host)
            _run("ip", "link", "set", veth, "master", BRIDGE, "up")
            ns = ("ip", "netns", "exec", host)
            _run(*ns, "ip", "link", "set", "lo", "up")
            _run(*ns, "ip", "addr", "replace", f"{SUBNET}.{i}/24", "dev",
                 IFACE)
            _run(*ns, "ip", "link", "set", IFACE, "up")
        self.set_rate(self.rate)
        _write_etc_hosts(self.hosts)
        os.makedirs(STATE_DIR, exist_ok=True)
        with open(LAUNCHER + ".tmp", "w") as f:
            f.write(_LAUNCH_SCRIPT)
        os.chmod(LAUNCHER + ".tmp", 0o755)
        os.replace(LAUNCHER + ".tmp", LAUNCHER)

    def down(self):
        """Remove everything the bed (or an earlier crashed one) created."""
        teardown()

    def __enter__(self):
        self.up()
        # the last resort, for an exit that skips __exit__
        atexit.register(teardown)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._previous_handlers[sig] = signal.signal(sig, _exit_on_signal)
        return self

    def __exit__(self, *exc):
        try:
            self.down()
        finally:
            atexit.unregister(teardown)
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

        Pass ``-n hosts*ppn`` (or nothing: hydra then starts ``ppn`` per
        host) and the program after them. :meth:`env` is included as
        ``-genv`` pairs.

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
                "-launcher", "ssh", "-launcher-exec", LAUNCHER,
                "-iface", BRIDGE]
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
            for prefix, dev in ((), _veth(i)), \
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
        i = self._index(host)
        _run("ip", "link", "set", _veth(i), "up" if up else "down")

    def link_bytes(self):
        """Bytes each host has sent and received over its link so far.

        Read from the bridge side's veth counters (what the host sends, the
        bridge receives).

        Returns:
            dict host name -> ``{"tx": bytes sent, "rx": bytes received}``.
        """
        counts = {}
        for i, host in enumerate(self.hosts, start=1):
            stats = f"/sys/class/net/{_veth(i)}/statistics"
            with open(f"{stats}/rx_bytes") as f:
                tx = int(f.read())
            with open(f"{stats}/tx_bytes") as f:
                rx = int(f.read())
            counts[host] = {"tx": tx, "rx": rx}
        return counts

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
        hosts = self.hosts if host is None else [self.hosts[self._index(host)
                                                            - 1]]
        found = set()
        for h in hosts:
            found.update(_ns_pids(h))
        return sorted(found)

    def kill_all(self):
        """SIGKILL every process inside the hosts; returns how many."""
        killed = 0
        for h in self.hosts:
            killed += _kill_ns(h)
        return killed

    def _index(self, host):
        if isinstance(host, int):
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


def _remove_host(i):
    host = host_name(i)
    if host in _namespaces():
        _kill_ns(host)
        _run("ip", "netns", "del", host, check=False)
    if _veth(i) in _links():
        _run("ip", "link", "del", _veth(i), check=False)


def _write_etc_hosts(hosts):
    with open(ETC_HOSTS) as f:
        lines = [line for line in f.read().splitlines() if MARK not in line]
    lines += [f"{SUBNET}.{i} {h} {MARK}" for i, h in enumerate(hosts, 1)]
    _replace_etc_hosts(lines)


def _replace_etc_hosts(lines):
    # /etc/hosts is often a bind mount (containers): rewrite it in place.
    with open(ETC_HOSTS, "r+") as f:
        f.seek(0)
        f.write("\n".join(lines) + "\n")
        f.truncate()


def teardown():
    """Remove every trace of a bed, whoever brought it up: processes in the
    hosts, namespaces, veths, qdiscs, the bridge, the ``/etc/hosts`` lines
    and the launcher script. Safe to call when nothing is up.

    Returns:
        list of what was removed, for the record.
    """
    removed = []
    for host in _namespaces():
        n = _kill_ns(host)
        _run("ip", "netns", "del", host, check=False)
        removed.append(f"namespace {host}" + (f" ({n} processes killed)"
                                              if n else ""))
    for link in sorted(_links()):
        if re.fullmatch(rf"{PREFIX}-h\d+-br", link):
            _run("ip", "link", "del", link, check=False)
            removed.append(f"veth {link}")
    if BRIDGE in _links():
        _run("ip", "link", "del", BRIDGE, check=False)
        removed.append(f"bridge {BRIDGE}")
    try:
        with open(ETC_HOSTS) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    kept = [line for line in lines if MARK not in line]
    if len(kept) != len(lines):
        _replace_etc_hosts(kept)
        removed.append(f"{len(lines) - len(kept)} {ETC_HOSTS} lines")
    if os.path.isdir(STATE_DIR):
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        removed.append(STATE_DIR)
    return removed


def _exit_on_signal(signum, frame):
    teardown()
    raise SystemExit(128 + signum)


def status():
    """What of a bed is up now, in a few lines of text."""
    lines = []
    for host in _namespaces():
        addr = _run("ip", "netns", "exec", host, "ip", "-4", "-o", "addr",
                    "show", IFACE, check=False).stdout.split()
        qdisc = _run("ip", "netns", "exec", host, "tc", "qdisc", "show",
                     "dev", IFACE, check=False).stdout.strip()
        i = int(host.rsplit("h", 1)[1])
        stats = f"/sys/class/net/{_veth(i)}/statistics"
        try:
            with open(f"{stats}/rx_bytes") as f:
                tx = int(f.read())
            with open(f"{stats}/tx_bytes") as f:
                rx = int(f.read())
        except OSError:
            tx = rx = -1
        lines.append(f"{host}: {addr[3] if len(addr) > 3 else '?'} "
                     f"processes={len(_ns_pids(host))} tx={tx} rx={rx} "
                     f"qdisc={qdisc.split(' refcnt')[0] or '-'}")
    lines.append(f"bridge {BRIDGE}: "
                 f"{'up' if BRIDGE in _links() else 'absent'}")
    return "\n".join(lines)


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


def _launch_args(bed, hosts, ppn):
    if bed is None:
        bed = HostBed(max(hosts, 2))
    missing = [h for h in bed.hosts[:hosts] if h not in _namespaces()]
    if missing:
        raise RuntimeError(f"hosts {missing} are not up; bring the bed up "
                           "first (HostBed, or `python tests/hosts.py up`)")
    return bed, bed.mpiexec_args(ppn, hosts)


def _sweep(bed):
    """Kill what a run left inside the hosts; returns those pids."""
    left = bed.pids()
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
        bed: the :class:`HostBed` (default: the one that is up).
        check: assert a zero exit status, and that no process was left in
            the hosts.
        **kwargs: ``timeout``, ``env`` as for ``run_mpi``.

    Returns:
        subprocess.CompletedProcess; ``.leftover`` lists the pids that were
        still running inside the hosts after the launcher ended (then
        killed).
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
    sub.add_parser("down", help="remove every trace of a bed")
    sub.add_parser("status", help="show what is up")
    p_run = sub.add_parser("run", help="run a command on the hosts through "
                           "the venv's mpiexec")
    p_run.add_argument("-n", type=int, default=2, help="hosts")
    p_run.add_argument("-ppn", type=int, default=1, help="ranks per host")
    p_run.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "up":
        bed = HostBed(args.n, args.rate).up()
        print(f"up: {', '.join(bed.hosts)} on {BRIDGE}"
              f" rate={args.rate or 'unlimited'}")
        print(f"mpiexec {' '.join(bed.mpiexec_args(1))} -n {args.n} ...")
    elif args.command == "down":
        removed = teardown()
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
