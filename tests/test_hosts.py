"""Everything across emulated hosts (``tests/hosts.py``): the bed itself,
then the existing MPI test scripts placed on 2 hosts x 1 rank and 2 hosts
x 2 ranks, checked by the same assertion helpers as on one host, and faults
over the link (a rank killed on the other host, the link cut mid-training,
Ctrl-C to the launcher).

The bed needs root and iproute2; elsewhere the module skips with the
reason. One bed serves the module (``bed``); the life-cycle tests bring up
beds of their own before it.

The tests whose names say ``keras`` are marked ``keras`` (conftest): ``make
test-keras-backends`` runs them, and only them, on JAX and TensorFlow too.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import hosts
from hosts import (HostBed, hostbed, run_on_hosts, run_on_hosts_interrupted,
                   run_on_hosts_json, teardown_stale, unavailable_reason)
from mpirun import HERE, ROOT, once_per_key, read_rank_json, run_mpi
from test_graph_adapters import RULES, _lib, _rule_name, check_rule_run

if unavailable_reason():        # one skip, with the reason, for the module
    pytest.skip(unavailable_reason(), allow_module_level=True)

bed = hostbed(2)

LAYOUTS = [pytest.param(1, id="2x1"), pytest.param(2, id="2x2")]
LINK_TIMEOUT = 5            # TMPI_EXCHANGE_TIMEOUT when the link is cut
KILL_LIMIT = 30             # seconds from a SIGKILL to the launcher's end


def _traces(k):
    """What of bed ``k`` exists: namespaces, links, /etc/hosts lines,
    its state directory."""
    found = [n for n in hosts._namespaces() if n.startswith(f"tmpi{k}-")]
    found += sorted(n for n in hosts._links() if n.startswith(f"tmpi{k}-"))
    with open(hosts.ETC_HOSTS) as f:
        found += [line.strip() for line in f
                  if line.rstrip().endswith(f"{hosts.MARK} {k}")]
    if os.path.exists(hosts._state(k)):
        found.append(hosts._state(k))
    return found


def _wait_for_no_pids(bed, host, seconds):
    """The processes still running in ``host`` (all hosts: ``None``) after
    up to ``seconds`` of waiting for them to end."""
    deadline = time.monotonic() + seconds
    while bed.pids(host) and time.monotonic() < deadline:
        time.sleep(0.05)
    return bed.pids(host)


def _ns(host, *cmd):
    return subprocess.run(["ip", "netns", "exec", host, *cmd],
                          capture_output=True, text=True, check=True).stdout


# -- launchers with run_mpi's signature: n ranks on 2 hosts --------------------

def _run(script, n, *args, **kwargs):
    proc = run_on_hosts(script, *args, hosts=2, ppn=n // 2, **kwargs)
    assert proc.leftover == [], f"left running in the hosts: {proc.leftover}"
    return proc


def _run_json(script, n, tmp_path, *args, **kwargs):
    return run_on_hosts_json(script, tmp_path, *args, hosts=2, ppn=n // 2,
                             **kwargs)


def _run_configs(script, ppn, out, configs, **kwargs):
    """``tests/mpirun.run_mpi_configs`` on 2 hosts x ``ppn`` ranks: one
    launch trains every configuration of ``configs`` in turn."""
    out.mkdir(parents=True, exist_ok=True)
    configs = {name: [str(v) for v in options]
               for name, options in configs.items()}
    _run(script, 2 * ppn, "--out", out, "--configs", json.dumps(configs),
         **kwargs)
    return {name: read_rank_json(out / name, 2 * ppn) for name in configs}


def _run_interrupted(script, n, marker, *args, **kwargs):
    proc = run_on_hosts_interrupted(script, marker, *args, hosts=2,
                                    ppn=n // 2, **kwargs)
    assert proc.leftover == [], f"left running in the hosts: {proc.leftover}"
    return proc


# -- the bed -----------------------------------------------------------------

def test_bed_comes_up_idempotently_and_down_leaves_nothing():
    bed3 = HostBed(3, rate="10gbit")
    try:
        bed3.up()
        k = bed3.id
        assert bed3.up().id == k                      # idempotent
        for i, host in enumerate(bed3.hosts, start=1):
            assert socket.gethostbyname(host) == f"198.18.{k}.{i}"
            # the host's only addresses: loopback and its link, in 198.18/15
            addrs = sorted(line.split()[3] for line in _ns(
                host, "ip", "-4", "-o", "addr", "show").splitlines())
            assert addrs == ["127.0.0.1/8", f"198.18.{k}.{i}/24"]
            # a token bucket each way: inside the host and on the bridge
            for qdisc in (_ns(host, "tc", "qdisc", "show", "dev", "tmpi0"),
                          subprocess.run(
                              ["tc", "qdisc", "show", "dev",
                               f"tmpi{k}-h{i}-br"], capture_output=True,
                              text=True).stdout):
                assert "tbf" in qdisc and "rate 10Gbit" in qdisc, qdisc
        stray = subprocess.Popen(["ip", "netns", "exec", bed3.hosts[0],
                                  "sleep", "600"])
        while not bed3.pids(1):
            time.sleep(0.02)
        bed3.down()
        assert stray.wait(timeout=10) == -signal.SIGKILL
        assert _traces(k) == []
    finally:
        bed3.down()


_CHILD = (f"import sys, time\nsys.path.insert(0, {HERE!r})\n"
          "from hosts import HostBed\n")


def test_leftovers_of_a_crashed_run_are_removed():
    # brings a bed up, starts a process in it and dies without tearing down
    code = _CHILD + ("import os, subprocess; b = HostBed(2).up(); "
                     "subprocess.Popen(['ip', 'netns', 'exec', b.hosts[1], "
                     "'sleep', '600'], stdout=subprocess.DEVNULL); "
                     "print(b.id, flush=True); os._exit(0)")
    k = int(subprocess.check_output([sys.executable, "-c", code], text=True,
                                    timeout=60))
    try:
        assert f"tmpi{k}-h1" in _traces(k)
        teardown_stale()           # what `hosts.py down` and every up() do
        assert _traces(k) == []
    finally:
        teardown_stale()


def test_sigterm_to_the_owner_tears_its_bed_down():
    code = _CHILD + ("with HostBed(2) as b:\n"
                     "    print(b.id, flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code],
                            stdout=subprocess.PIPE, text=True)
    try:
        k = int(proc.stdout.readline())
        assert _traces(k)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert _traces(k) == []
    finally:
        proc.kill()
        proc.wait()
        teardown_stale()


@pytest.mark.parametrize("ppn,mib", [(1, 16), (2, 64)],
                         ids=["2x1-16MiB", "2x2-64MiB"])
def test_each_host_is_a_node_and_the_allreduce_crosses_the_link(
        tmp_path, bed, ppn, mib):
    before = bed.link_bytes()
    results = run_on_hosts_json("hosts_probe.py", tmp_path, "--mib", mib,
                                ppn=ppn, timeout=120)
    moved = bed.bytes_since(before)
    for rank, r in enumerate(results):
        host = bed.hosts[rank // ppn]
        assert r["hostname"] == r["processor"] == host
        assert (r["node_size"], r["node_rank"]) == (ppn, rank % ppn)
        assert r["ucx_tls"] == "tcp,self"
        assert r["exact"], r
    # each host sent and received the buffer's bytes over its own link
    for m in moved.values():
        assert m["tx"] >= mib * 2**20 and m["rx"] >= mib * 2**20, moved


def test_a_token_bucket_limits_the_link(tmp_path, bed):
    bed.set_rate("1gbit")
    try:
        results = run_on_hosts_json("hosts_probe.py", tmp_path, "--mib", 16,
                                    ppn=1, timeout=120)
    finally:
        bed.set_rate(None)
    # 16 MiB each way at 125 MB/s, less the bucket's burst (rate / 100)
    floor = (16 * 2**20 - 1.25e6) / 1.25e8
    assert all(r["exact"] for r in results)
    assert results[0]["seconds"] >= floor, (results[0]["seconds"], floor)


# -- the rules through the core ----------------------------------------------

@pytest.mark.parametrize("ppn", LAYOUTS)
def test_core_bsp_across_hosts(tmp_path, bed, ppn):
    from test_core import check_core_rules

    check_core_rules(run_on_hosts_json("core_rules.py", tmp_path, ppn=ppn),
                     2 * ppn, ppn)


@pytest.mark.parametrize("ppn", LAYOUTS)
def test_core_synchronous_easgd_across_hosts(tmp_path, bed, ppn):
    from test_easgd import ETA, STEPS, TAU, check_synchronous

    check_synchronous(run_on_hosts_json(
        "easgd_core.py", tmp_path, "--synchronous", "--steps", STEPS, "--tau",
        TAU, "--eta", ETA, ppn=ppn), 2 * ppn)


def test_core_asynchronous_easgd_worker_on_the_other_host(tmp_path, bed):
    from test_easgd import ETA, STEPS, TAU, check_one_worker

    check_one_worker(run_on_hosts_json(
        "easgd_core.py", tmp_path, "--steps", STEPS, "--tau", TAU, "--eta",
        ETA, ppn=1))


def test_core_asynchronous_easgd_workers_on_both_hosts(tmp_path, bed):
    # the server is rank 0 on host 1; workers 1 (host 1), 2 and 3 (host 2)
    from test_easgd import check_center_books

    check_center_books(run_on_hosts_json(
        "easgd_core.py", tmp_path, "--steps", 30, "--tau", 2, "--delays",
        ppn=2, timeout=120), 4)


@pytest.mark.parametrize("ppn", LAYOUTS)
def test_core_gosgd_across_hosts(tmp_path, bed, ppn):
    # check_conserved also finds every message sent received once: the
    # drain at shutdown across the link
    from test_gosgd import check_conserved

    check_conserved(run_on_hosts_json(
        "gosgd_core.py", tmp_path, "--runs", 3, "--steps", 30, "--p", 0.5,
        ppn=ppn), 3, 2 * ppn)


# -- the adapters --------------------------------------------------------------

_ENV_PROBE = """
import json, os, socket, sys
rank = int(os.environ["PMI_RANK"])
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "host": socket.gethostname(),
               "KERAS_BACKEND": os.environ.get("KERAS_BACKEND")}, f)
"""


def test_keras_backend_reaches_every_host(tmp_path, bed):
    # The Keras tests below, and the zoo's --backend default, take the
    # backend from KERAS_BACKEND (Keras reads it at import): the ranks on
    # the other host must see it through hydra's launcher-exec, not fall
    # back to Keras' default (TensorFlow, or ~/.keras/keras.json's).
    # Each rank writes a file: the launcher forwards the ranks' output in
    # pieces, two lines can arrive joined.
    backend = os.environ["KERAS_BACKEND"]       # conftest: torch if unset
    probe = tmp_path / "env_probe.py"
    probe.write_text(_ENV_PROBE)
    proc = _run(str(probe), 2, tmp_path, timeout=120)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text())
             for r in range(2)]
    assert [(r["rank"], r["host"]) for r in ranks] == \
        list(enumerate(bed.hosts)), proc.stdout
    assert [r["KERAS_BACKEND"] for r in ranks] == [backend] * 2, ranks


@pytest.mark.parametrize("ppn,mode,optimizer", [
    pytest.param(1, "grads", "adam", id="2x1-grads-adam"),
    pytest.param(2, "params", "momentum", id="2x2-params-momentum")])
def test_keras_bsp_across_hosts_equals_large_batch(tmp_path, bed, ppn, mode,
                                                   optimizer):
    pytest.importorskip("keras", reason="the Keras adapter needs keras")
    from test_keras_bsp import B, EPOCHS, N, check_large_batch

    ranks = run_on_hosts_json(
        "keras_fit.py", tmp_path, "--optimizer", optimizer, "--mode", mode,
        "--batch", B, "--n", N, "--epochs", EPOCHS, ppn=ppn, timeout=300)
    check_large_batch(ranks, optimizer)


def test_pytensor_bsp_across_hosts_equals_large_batch(tmp_path, bed):
    _lib("pytensor")
    from test_graph_adapters import B, STEPS, check_large_batch

    ranks = run_on_hosts_json(
        "graph_fit.py", tmp_path, "--lib", "pytensor", "--entry", "grads",
        "--optimizer", "adam", "--steps", STEPS, "--batch", B, ppn=1,
        timeout=300)
    check_large_batch(ranks, "pytensor", "adam")


@pytest.fixture(scope="module")
def rules_job(tmp_path_factory, bed):
    """``rules_job(script, lib)``: the results, by configuration, of one
    launch on 2 hosts x 2 ranks that trained every configuration of the
    one-host rule tests: keras_fit.py's asynchronous EASGD (the server on
    host 1, workers on both hosts), synchronous EASGD and GoSGD
    (test_keras_async_rules), or graph_fit.py's for ``lib``
    (test_graph_adapters' three_rank_configs, and BSP with every=4);
    launched on first use."""

    def launch(script, lib=None):
        if script == "keras_fit.py":
            from test_keras_async_rules import CONFIGS
            configs = CONFIGS[2]
        else:
            from test_graph_adapters import (three_rank_configs,
                                             two_rank_configs)
            configs = three_rank_configs(lib)
            configs["every"] = two_rank_configs(lib)["every"]
        return _run_configs(script, 2, tmp_path_factory.mktemp(
            lib or "keras"), configs, timeout=480)

    return once_per_key(launch)


_RULE_CASES = [pytest.param(rule, options, id=_rule_name(rule, options))
               for rule, options in RULES]


@pytest.mark.parametrize("config", ["easgd", "sync-easgd", "gosgd"])
def test_keras_rules_across_hosts_2x2(rules_job, config):
    pytest.importorskip("keras", reason="the Keras adapter needs keras")
    from test_keras_async_rules import (check_asynchronous_easgd, check_gosgd,
                                        check_synchronous_easgd)

    check = {"easgd": check_asynchronous_easgd, "gosgd": check_gosgd,
             "sync-easgd": check_synchronous_easgd}[config]
    check(rules_job("keras_fit.py")[config])


@pytest.mark.parametrize("rule,options", _RULE_CASES)
def test_pytensor_rules_across_hosts_2x2(rules_job, rule, options):
    _lib("pytensor")
    check_rule_run(rules_job("graph_fit.py", "pytensor")[
        _rule_name(rule, options)], rule, options)


@pytest.mark.parametrize("rule,options", _RULE_CASES)
def test_lasagne_rules_across_hosts_2x2(rules_job, rule, options):
    _lib("theano")
    check_rule_run(rules_job("graph_fit.py", "theano")[
        _rule_name(rule, options)], rule, options)


@pytest.mark.parametrize("lib", ["pytensor", pytest.param("theano",
                                                          id="lasagne")])
def test_graph_bsp_every_k_across_hosts_2x2(rules_job, lib):
    # the core's every=2 runs across hosts in test_core_bsp_across_hosts
    from test_graph_adapters import check_every_then_finalize

    _lib(lib)
    check_every_then_finalize(rules_job("graph_fit.py", lib)["every"])


def test_lasagne_bsp_across_hosts_equals_large_batch(tmp_path, bed):
    _lib("theano")
    from test_graph_adapters import B, STEPS, check_large_batch

    ranks = run_on_hosts_json(
        "graph_fit.py", tmp_path, "--lib", "theano", "--entry", "updates",
        "--optimizer", "nesterov", "--steps", STEPS, "--batch", B, ppn=1,
        timeout=300)
    check_large_batch(ranks, "theano", "nesterov")


def test_zoo_keras_wresnet_on_two_hosts(bed):
    pytest.importorskip("keras", reason="the Keras zoo needs keras")
    from test_zoo import check_output

    proc = _run(f"{ROOT}/zoo/keras_wresnet.py", 2, "--epochs", 2,
                timeout=300)
    # digits, 2 epochs: well above chance (0.1); JAX's initial weights
    # reach 0.37 there (as on one host, test_zoo), torch's 0.5+
    check_output(proc.stdout, epochs=2, ranks=2, accuracy=0.3)


# -- checkpoints and faults over the link --------------------------------------

def test_kill_on_the_other_host_ends_the_job_and_resume_is_exact(tmp_path,
                                                                 bed):
    # the last rank, on host 2, SIGKILLs itself; the checkpoint directory
    # is on the filesystem both hosts see
    _lib("pytensor")
    from test_checkpoint_graph import check_resume_after_kill

    check_resume_after_kill(tmp_path, "pytensor", "updates", "momentum",
                            run=_run, run_json=_run_json)


def test_link_cut_mid_training_stops_every_rank_naming_the_exchange(
        tmp_path, bed):
    """Host 2's link goes down while BSP trains. Each rank waits in the
    parameter average until the exchange timeout, says so and aborts; the
    launcher ends within the timeout (and the abort's 1 s grace), and host
    1 empties. Host 2, cut off from the launcher, empties too, link still
    down: MPI_Abort leaves the killing to a process manager it cannot
    reach, so the watchdog ends the process itself 5 s after the abort.
    The last checkpoint loads."""
    _lib("pytensor")
    from test_checkpoint_graph import _latest

    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    out.mkdir()
    cut = {}

    def cut_when_training():
        deadline = time.monotonic() + 120
        while not (out / "marker").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        cut["at"] = time.monotonic()
        bed.set_link(2, False)

    thread = threading.Thread(target=cut_when_training, daemon=True)
    thread.start()
    try:
        # hosts_stderr.py: each rank's stderr in a file of its own, since
        # host 2 cannot forward its output to the launcher. Epochs of 50
        # steps, cut at step 2: both ranks wait in a guarded average, far
        # from the epoch's checkpoint, whose gather and broadcast the
        # exchange timeout now covers too, but whose wait would name the
        # checkpoint rather than the average this test asserts on)
        proc = run_mpi("hosts_stderr.py", 2, out, "graph_ckpt.py", "--out",
                       out, "--ckpt", ckpt, "--epochs", 1000, "--steps", 50,
                       "--mark", "1:2", "--slow", 0.02,
                       mpiexec_args=bed.mpiexec_args(1),
                       env={"TMPI_EXCHANGE_TIMEOUT": LINK_TIMEOUT},
                       check=False, timeout=120)
        ended = time.monotonic()
        thread.join(timeout=1)
        on_host1 = _wait_for_no_pids(bed, 1, seconds=5)
        on_host2 = _wait_for_no_pids(bed, 2, seconds=15)
    finally:
        bed.set_link(2, True)
    try:
        left = _wait_for_no_pids(bed, None, seconds=10)
    finally:
        bed.kill_all()
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "at" in cut, "training never reached the marker"
    assert ended - cut["at"] < LINK_TIMEOUT + 4, ended - cut["at"]
    for rank in (0, 1):
        text = (out / f"rank{rank}.stderr").read_text()
        said = re.search(rf"tmpi: rank {rank} of 2 has waited (\d+) s in the "
                         r"BSP parameter average", text)
        assert said and int(said.group(1)) >= LINK_TIMEOUT, text[-2000:]
        assert "MPI_Abort" in text, text[-2000:]
    assert on_host1 == [], "host 1 still ran processes of the job 5 s on"
    assert on_host2 == [], f"host 2, cut off, kept {on_host2}"
    assert left == [], f"host 2 kept {left} after the link came back"
    meta, _, _ = _latest(ckpt)
    assert meta["epoch"] >= 1 and meta["interrupted"] is False


def test_sigint_to_the_launcher_reaches_every_host(tmp_path, bed):
    _lib("pytensor")
    from test_checkpoint_graph import check_sigint

    check_sigint(tmp_path, run_interrupted=_run_interrupted)
