"""The bad-input matrix (docs/RELIABILITY.md): wrong types, out-of-range
values, models that differ across ranks, data that does not divide, no data,
another tmpi version on one rank, a checkpoint of another model. Each gives
a clear error, on every rank where ranks are involved, or a documented
correct behaviour; never a hang.

Cases already checked elsewhere are listed in docs/RELIABILITY.md with
their tests; this file holds the rest.
"""

import json
import os
import sys
import time

import numpy as np
import pytest

import tmpi_core
from mpirun import ROOT, run_mpi
from tmpi_core import (Context, FlatBuffer, get_context, load_idx,
                       make_exchanger, make_rule, read_run, shard)
from tmpi_core.checkpoint import (CheckpointError, Checkpointer, json_array,
                                  read_checkpoint)

TIMEOUT = 60


# -- the core, in one process ---------------------------------------------------

@pytest.mark.parametrize("rule,options,match", [
    (3, {}, r"rule=3 is not a known rule; choose one of"),
    (None, {}, r"rule=None is not a known rule"),
    ("bsp", {"strategy": ["ar"]},
     r"strategy=\['ar'\] is not a known exchanger; choose one of"),
    ("easgd", {"strategy": ["ar"]}, r"strategy=\['ar'\] is not a known"),
    ("bsp", {"every": True}, "every=True must be an integer >= 1"),
    ("bsp", {"warmup_steps": 2.5}, "warmup_steps=2.5 must be an integer"),
    ("bsp", {"lr_scaling": 1}, "lr_scaling=1 is not supported"),
    ("bsp", {"mode": None}, "mode=None is not a BSP mode"),
    ("easgd", {"tau": 2.0}, "tau=2.0 must be an integer >= 1"),
    ("easgd", {"alpha": "0.5"}, "alpha='0.5' must be a number"),
    ("easgd", {"beta": float("nan")}, r"beta=nan must lie in \(0, 1\]"),
    ("gosgd", {"p": float("nan")}, r"p=nan must lie in \(0, 1\]"),
    ("gosgd", {"seed": True}, "seed=True must be an integer or None"),
    ("gosgd", {"log_messages": "no"}, "log_messages='no' must be True or"),
])
def test_rule_options_of_the_wrong_type_or_range(rule, options, match):
    with pytest.raises(ValueError, match=match):
        make_rule(rule, **options)


def test_options_with_a_rule_instance_are_refused():
    with pytest.raises(ValueError, match=r"options \['every'\] were given "
                                         "with a Rule instance"):
        make_rule(make_rule("bsp"), every=2)


def test_a_communicator_that_is_not_one_is_named():
    rule = make_rule("bsp", comm="world")       # checked when first used
    with pytest.raises(ValueError, match="comm='world' must be an "
                                         r"mpi4py.MPI.Comm"):
        rule.start([np.zeros(2)])
    with pytest.raises(ValueError, match="comm=3 must be an mpi4py.MPI.Comm"):
        get_context(3)
    with pytest.raises(ValueError, match="comm=None must be an mpi4py"):
        make_exchanger("ar", None)
    with pytest.raises(ValueError, match=r"strategy=\['ar'\] is not a known"):
        make_exchanger(["ar"], get_context().comm)


def test_thread_count_from_the_environment_is_checked(monkeypatch):
    from mpi4py import MPI

    monkeypatch.setenv("TMPI_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="TMPI_NUM_THREADS='two' is not an "
                                         "integer"):
        Context(MPI.COMM_SELF)
    monkeypatch.setenv("TMPI_NUM_THREADS", "0")
    with pytest.raises(ValueError, match="TMPI_NUM_THREADS=0 must be >= 1"):
        Context(MPI.COMM_SELF)


def test_none_parameters_are_named():
    with pytest.raises(ValueError, match=r"params \[1\] are None"):
        make_rule("bsp").start([np.zeros(2), None])


def test_parameters_needed_but_not_given():
    rule = make_rule("bsp", mode="params")
    rule.start([np.zeros(2)])
    with pytest.raises(ValueError, match="end_step needs the parameters"):
        rule.end_step(None)
    with pytest.raises(RuntimeError, match=r"BSP.start\(params\) must run"):
        make_rule("bsp").finalize([np.zeros(2)])


@pytest.mark.parametrize("shapes,match", [
    ([3], r"shapes\[0\]=3 must be a tuple of integers, e.g. \(3,\)"),
    ("ab", r"shapes\[0\]='a' must be a tuple of integers"),
    ([(2, 2.5)], r"shapes\[0\]=\(2, 2.5\) must be a tuple of integers"),
    ([(2, -1)], r"shapes must be non-negative, got \(2, -1\)"),
])
def test_flat_buffer_shapes(shapes, match):
    with pytest.raises(ValueError, match=match):
        FlatBuffer(shapes)


def test_flat_buffer_with_no_tensors_is_empty():
    buf = FlatBuffer([])
    assert buf.size == 0 and len(buf) == 0


@pytest.mark.parametrize("arrays,rank,size,match", [
    ([], 0, 1, r"no arrays to shard"),
    (5, 0, 1, r"must be arrays with a sample dimension first, got \['int'\]"),
    ({"a": np.arange(4)}, 0, 1, r"got \['dict'\]; shard a dict of inputs "
                                "value by value"),
    ((np.zeros((0, 3)), np.zeros(0)), 0, 1, "cannot shard 0 samples over 1"),
    ((np.arange(4), np.arange(5)), 0, 2, r"different lengths \[4, 5\]"),
    (np.arange(4), 2, 2, r"rank=2 must lie in \[0, size=2\)"),
    (np.arange(4), 0, 0, r"rank=0 must lie in \[0, size=0\)"),
    (np.arange(4), -1, 2, r"rank=-1 must lie in \[0, size=2\)"),
])
def test_shard_bad_input(arrays, rank, size, match):
    with pytest.raises(ValueError, match=match):
        shard(arrays, rank, size)


def test_uneven_data_gives_equal_shards():
    # 10 samples, 3 ranks: 3 each, the last sample dropped, no overlap
    parts = [shard(np.arange(10), r, 3) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]


def test_truncated_idx_file_is_named(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    header = bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big")
    path.write_bytes(header + bytes(4))
    with pytest.raises(ValueError, match="holds 4 bytes of data; its header "
                                         r"says shape \(10,\) \(10 bytes\)"):
        load_idx(str(path))
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))
    with pytest.raises(ValueError, match="its IDX header is cut off"):
        load_idx(str(path))


def test_missing_mnist_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"train-images-idx3-ubyte\[.gz\] not found"):
        tmpi_core.load_dataset("mnist", str(tmp_path))


def test_digits_split_out_of_range():
    with pytest.raises(ValueError, match=r"test_fraction=1.0 must lie in "
                                         r"\(0, 1\)"):
        tmpi_core.load_digits(test_fraction=1.0)


# -- checkpoints and records, in one process -------------------------------------

def test_checkpoint_bad_state_is_a_clear_error(tmp_path):
    store = Checkpointer(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="TypeError: shared state must "
                                              "be a dict of arrays, got list"):
        store.save([np.zeros(2)])
    with pytest.raises(CheckpointError, match="int64 is not JSON "
                                              "serializable; no earlier "
                                              "checkpoint exists"):
        store.save({"w": np.zeros(2)}, meta={"epoch": np.int64(1)})
    with pytest.raises(TypeError, match="local state must be a dict"):
        store.save({"w": np.zeros(2)}, local=[np.zeros(2)])
    with pytest.raises(CheckpointError, match="ValueError: bad shared state "
                                              "name '__x'"):
        store.save({"__x": np.zeros(1)})
    assert store.latest() is None             # nothing half-written
    with pytest.raises(CheckpointError, match="could not read checkpoint "
                                              ".*FileNotFoundError"):
        store.load(str(tmp_path / "missing.npz"))


def test_checkpoint_of_another_format_is_refused(tmp_path):
    path = tmp_path / "ckpt-00000001.npz"
    np.savez(path, __meta__=json_array({"format": 2, "ranks": 1}))
    with pytest.raises(ValueError, match="checkpoint format 2 is not 1"):
        read_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="no readable checkpoint in "
                                              ".*checkpoint format 2 is not 1"):
        Checkpointer(tmp_path).load()


def test_records_cut_off_by_a_kill_are_read_up_to_the_cut(tmp_path):
    from tmpi_core import report

    run = tmp_path / "run"
    run.mkdir()
    line = '{"step": %d, "calc": 0.1, "comm": 0.0, "wait": 0.0, "time": 1}'
    (run / "rank0.jsonl").write_text(line % 0 + "\n" + line % 1 + "\n"
                                     + '{"step": 2, "ca')
    assert [r["step"] for r in read_run(run)["ranks"][0]] == [0, 1]
    (run / "rank0.jsonl").write_text(line % 0 + "\n{oops\n" + line % 2 + "\n")
    with pytest.raises(ValueError, match=r"rank0.jsonl:2 is not a record "
                                         "line"):
        read_run(run)
    with pytest.raises(SystemExit) as exit_:
        report.main([str(run)])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        report.main([])                     # a run directory is required
    assert exit_.value.code == 2


# -- on real ranks ----------------------------------------------------------------

def _run(case, ranks=2):
    start = time.monotonic()
    proc = run_mpi("bad_input.py", ranks, "--case", case, timeout=TIMEOUT,
                   check=False)
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT
    return proc


def _on_every_rank(proc, case, message, ranks=2, error="ValueError"):
    out = proc.stdout
    for rank in range(ranks):
        line = f"case {case} rank {rank}: {error}: {message}"
        assert out.count(line) == 1, (line, out[-3000:], proc.stderr[-3000:])


CORE = [
    ("shapes", "parameters differ across ranks: entry 1 is '#1' shape=(4,) "
               "dtype=float32 on rank 1 but '#1' shape=(3,) dtype=float32 on "
               "rank 0; every rank must build the same model"),
    ("dtypes", "parameters differ across ranks: entry 0 is '#0' shape=(2, 3) "
               "dtype=float64 on rank 1 but '#0' shape=(2, 3) dtype=float32"),
    ("count", "parameters differ across ranks: rank 1 has 3 parameters, "
              "rank 0 has 2"),
    ("options", "rule options differ across ranks: mode='params' on rank 1 "
                "but 'grads' on rank 0; every rank must run the same "
                "configuration"),
    ("version", "rule options differ across ranks: tmpi='0.0.0-other' on "
                f"rank 1 but {tmpi_core.__version__!r} on rank 0; install one "
                "tmpi version on every host"),
    ("gradients", "gradients differ across ranks: entry 0 is '#0' "
                  "shape=(2, 4) dtype=float32 on rank 1 but '#0' shape=(2, 3)"),
    ("empty", "cannot shard 0 samples over 2 ranks: every rank needs at "
              "least one sample"),
    ("tiny", "cannot shard 1 samples over 2 ranks"),
]


@pytest.mark.parametrize("case,message", CORE, ids=[c for c, _ in CORE])
def test_core_bad_input_fails_on_every_rank(case, message):
    proc = _run(case)
    assert proc.returncode == 3, proc.stdout + proc.stderr   # no abort needed
    _on_every_rank(proc, case, message)


def test_uneven_data_on_three_ranks_runs_equal_steps():
    proc = _run("uneven", ranks=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in range(3):
        line = [s for s in proc.stdout.splitlines()
                if s.startswith(f"case uneven rank {rank}: ok ")]
        assert len(line) == 1, proc.stdout
        counts, means = line[0].split(" means=")
        assert counts.endswith("samples=3 steps=3")
        # step k averages samples 3k, 3k+1, 3k+2 of 11 (the 11th dropped)
        np.testing.assert_allclose(json.loads(means), [1.0, 4.0, 7.0], rtol=1e-12)


# -- Keras ---------------------------------------------------------------------

KERAS = [
    ("optimizer", "optimizer variables differ across ranks: rank 1 has 10 "
                  "optimizer variables, rank 0 has 6"),
    ("metrics", "metric variables differ across ranks: rank 1 has 2 metric "
                "variables, rank 0 has 4; every rank must build the same "
                "model: compile it with the same loss and metrics on every "
                "rank"),
    ("validation", "ranks reached different points of fit ({0: 'evaluation "
                   "steps', 1: 'epoch logs'}); every rank must use the same "
                   "validation setting"),
    ("eval-steps", "ranks would run different numbers of evaluation steps "
                   "({0: 2, 1: 5})"),
    ("options", "rule options differ across ranks: mode='params' on rank 1"),
    ("empty", ""),      # Keras' own error, worded by the backend
]


@pytest.fixture(scope="module")
def keras_run():
    pytest.importorskip("keras", reason="the Keras adapter needs keras")
    return _run("keras")


@pytest.mark.parametrize("case,message", KERAS, ids=[c for c, _ in KERAS])
def test_keras_bad_input_fails_on_every_rank(keras_run, case, message):
    assert keras_run.returncode == 3, keras_run.stdout + keras_run.stderr
    # no data: Keras' own error, a StopIteration on JAX
    error = "StopIteration" if case == "empty" \
        and os.environ.get("KERAS_BACKEND") == "jax" else "ValueError"
    _on_every_rank(keras_run, case, message, error=error)


@pytest.fixture
def tmpi_keras():
    pytest.importorskip("keras", reason="the Keras adapter needs keras")
    import tmpi_adapters.keras

    return tmpi_adapters.keras


@pytest.mark.parametrize("options,match", [
    ({"checkpoint": 123}, "checkpoint=123 must be a directory path"),
    ({"checkpoint": "d", "checkpoint_every": 0}, "checkpoint_every=0 must be"),
    ({"checkpoint": "d", "checkpoint_keep": 0}, "checkpoint_keep=0 must be"),
    ({"record": 3}, "record=3 must be a run directory"),
    ({"comm": "world"}, "comm='world' must be an mpi4py.MPI.Comm"),
    ({"strategy": ["ar"]}, r"strategy=\['ar'\] is not a known exchanger"),
    ({"nonfinite": "maybe"}, "nonfinite='maybe' must be None"),
    ({"mode": "params", "nonfinite": "skip"}, "nonfinite='skip' needs "
                                              "mode='grads'"),
])
def test_tmpisync_arguments(tmpi_keras, options, match):
    with pytest.raises(ValueError, match=match):
        tmpi_keras.TMPISync("bsp", **options)


def test_resume_epoch_needs_a_checkpoint_directory(tmpi_keras):
    with pytest.raises(ValueError, match=r"resume_epoch\(\) needs "
                                         r"TMPISync\(checkpoint=DIR\)"):
        tmpi_keras.TMPISync("bsp").resume_epoch()


def test_keras_data_helpers(tmpi_keras):
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self, n):
            super().__init__()
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return np.zeros((2, 6), np.float32), np.zeros(2, np.int64)

    with pytest.raises(ValueError, match="the dataset has 0 batches, fewer "
                                         "than the 1 ranks"):
        tmpi_keras.ShardedPyDataset(Batches(0))
    class Endless(keras.utils.PyDataset):
        def __getitem__(self, i):
            return np.zeros((2, 6), np.float32), np.zeros(2, np.int64)

    with pytest.raises(ValueError, match="needs a dataset with __len__"):
        tmpi_keras.ShardedPyDataset(Endless())
    with pytest.raises(ValueError, match="needs a keras.utils.PyDataset, got "
                                         r"list; for arrays use shard"):
        tmpi_keras.ShardedPyDataset([1, 2, 3])
    with pytest.raises(ValueError, match="cannot shard 0 samples over 1"):
        tmpi_keras.shard((np.zeros((0, 6)), np.zeros(0)))


def test_generator_without_length_warns(tmpi_keras):
    from kmodels import compile_model, make_data, make_model, make_optimizer

    x, y = make_data(16)

    def batches():
        for k in range(2):
            yield x[8 * k:8 * (k + 1)], y[8 * k:8 * (k + 1)]

    model = compile_model(make_model(0), make_optimizer("sgd"))
    with pytest.warns(UserWarning, match="the number of steps per epoch is "
                                         "unknown"):
        model.fit(batches(), epochs=1, verbose=0,
                  callbacks=[tmpi_keras.TMPISync()])


def test_linear_scaling_needs_a_constant_learning_rate(tmpi_keras):
    import keras
    from kmodels import compile_model, make_data, make_model

    x, y = make_data(16)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    model = compile_model(make_model(0), keras.optimizers.SGD(schedule))
    with pytest.raises(ValueError, match="lr_scaling='linear' needs a "
                                         "constant learning rate"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[
            tmpi_keras.TMPISync("bsp", lr_scaling="linear")])


def _fit_with_checkpoint(tmpi_keras, model, directory, epochs=1):
    from kmodels import compile_model, make_data, make_optimizer

    x, y = make_data(32)
    compile_model(model, make_optimizer("momentum"))
    sync = tmpi_keras.TMPISync("bsp", checkpoint=directory)
    start = sync.resume_epoch()
    model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=start,
              verbose=0, callbacks=[sync])
    return start


def test_resuming_with_another_model_is_refused(tmpi_keras, tmp_path):
    import keras
    from kmodels import make_model

    ckpt = tmp_path / "ckpt"
    _fit_with_checkpoint(tmpi_keras, make_model(0), ckpt)
    wider = keras.Sequential([keras.Input((6,)), keras.layers.Dense(17),
                              keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"model variable 0 \(.*\) has shape "
                                         r"\(6, 16\) in the checkpoint and "
                                         r"\(6, 17\) in this model"):
        _fit_with_checkpoint(tmpi_keras, wider, ckpt, epochs=2)
    deeper = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16),
                               keras.layers.Dense(16), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="holds 4 model variables; this model "
                                         "has 6: resume with the model"):
        _fit_with_checkpoint(tmpi_keras, deeper, ckpt, epochs=2)


def test_checkpoint_of_another_tmpi_version_resumes(tmpi_keras, tmp_path,
                                                    monkeypatch):
    # Documented: the checkpoint format, not the version, decides.
    from kmodels import make_model

    ckpt = tmp_path / "ckpt"
    _fit_with_checkpoint(tmpi_keras, make_model(0), ckpt)
    monkeypatch.setattr(tmpi_core.rules.base, "__version__", "0.0.0-other")
    assert _fit_with_checkpoint(tmpi_keras, make_model(0), ckpt,
                                epochs=2) == 1
    meta, _, _ = read_checkpoint(Checkpointer(ckpt).latest())
    assert meta["epoch"] == 2 and meta["rule"]["tmpi"] == "0.0.0-other"


# -- graph adapters (PyTensor here; the shared code serves Theano too) --------

@pytest.fixture
def pytensor_api():
    pytensor = pytest.importorskip(
        "pytensor", reason="PyTensor is tested in .venv (numpy 2)")
    import tmpi_adapters.pytensor

    return pytensor, tmpi_adapters.pytensor


def test_graph_adapter_arguments(pytensor_api, tmp_path):
    pytensor, api = pytensor_api
    w = pytensor.shared(np.zeros(3), name="w")
    with pytest.raises(ValueError, match="grads is empty: nothing to average"):
        api.distributed_grads([])
    with pytest.raises(ValueError, match="grads must be a list of symbolic "
                                         "gradients, got str"):
        api.distributed_grads("w")
    with pytest.raises(ValueError, match="updates must be an OrderedDict "
                                         r".* got int"):
        api.distributed(5)
    with pytest.raises(ValueError, match="updates must be what you give "
                                         r"function\(updates=\)"):
        api.Checkpointer(5, tmp_path)
    updates = api.distributed([(w, w + 1)])
    with pytest.raises(ValueError, match="every_exchanges=0 must be an "
                                         "integer >= 1"):
        api.Checkpointer(updates, tmp_path, watch_signals=False).serve(
            every_exchanges=0)


def test_graph_resume_with_another_model_is_refused(pytensor_api, tmp_path):
    pytensor, api = pytensor_api
    ckpt = tmp_path / "ckpt"

    def checkpointer(*shapes):
        shared = [pytensor.shared(np.zeros(s), name=f"w{i}")
                  for i, s in enumerate(shapes)]
        updates = api.distributed([(v, v + 1) for v in shared])
        return api.Checkpointer(updates, ckpt, watch_signals=False)

    checkpointer((3,)).save(epoch=1)
    with pytest.raises(ValueError, match=r"variable 0 \(w0\) has shape "
                                         r"\(3,\) in the checkpoint and "
                                         r"\(4,\) in this run"):
        checkpointer((4,)).restore()
    with pytest.raises(ValueError, match="holds 1 shared variables; this "
                                         "run has 2"):
        checkpointer((3,), (2,)).restore()
    assert checkpointer((3,)).restore() == 1


def test_graph_asynchronous_rule_resumes_only_on_as_many_ranks(
        pytensor_api, tmp_path):
    pytensor, api = pytensor_api
    rule = make_rule("gosgd", p=0.5)
    w = pytensor.shared(np.zeros(3), name="w")
    # a checkpoint as two GoSGD ranks write it, each with its own model
    meta = {"format": 1, "ranks": 2, "epoch": 1, "local": True,
            "rule": rule.config(), "step": 4}
    state = json_array({"step": 4, "weight": 0.5})
    np.savez(tmp_path / "ckpt-00000001.npz", __meta__=json_array(meta),
             **{f"rank{r}/{k}": v for r in range(2)
                for k, v in (("var/0", np.ones(3)), ("rule/json", state))})
    ckpt = api.Checkpointer([(w, w + 1)], tmp_path, rule=rule,
                            watch_signals=False)
    with pytest.raises(ValueError, match="was written by 2 ranks; GoSGD "
                                         "resumes only on as many"):
        ckpt.restore()


# -- the zoo's flags -----------------------------------------------------------

@pytest.fixture
def wresnet():
    pytest.importorskip("keras", reason="the Keras zoo needs keras")
    sys.path.insert(0, os.path.join(ROOT, "zoo"))
    try:
        import keras_wresnet
    finally:
        sys.path.pop(0)
    return keras_wresnet


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "--batch-size=0 must be >= 1"),
    (["--epochs", "-1"], "--epochs=-1 must be >= 1"),
    (["--warmup-epochs", "-2"], "--warmup-epochs=-2.0 must be >= 0"),
    (["--dropout", "1.5"], r"--dropout=1.5 must lie in [0, 1)"),
    (["--rule", "easgd", "--lr-scaling", "linear"],
     "--lr-scaling, --mode, --every and --strategy are options of the bsp "
     "rule, not of --rule easgd"),
    (["--rule", "gosgd", "--strategy", "shm"],
     "--strategy are options of the bsp rule, not of --rule gosgd"),
    (["--strategy", "fp8"], "argument --strategy: invalid choice: 'fp8'"),
    (["--mode", "avg"], "argument --mode: invalid choice: 'avg'"),
])
def test_keras_zoo_flags(wresnet, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        wresnet.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_keras_zoo_data_without_its_folder(wresnet):
    with pytest.raises(SystemExit, match="error: data set 'cifar10' is read "
                                         "from disk: give its folder"):
        wresnet.main(["--data", "cifar10"])


def test_keras_zoo_other_rules_reach_the_rule(wresnet):
    # --rule gosgd used to fail on BSP-only options; now it gets as far as
    # the rule, which needs two ranks (this process is one).
    with pytest.raises(ValueError, match="GoSGD needs at least 2 ranks"):
        wresnet.main(["--rule", "gosgd", "--epochs", "1", "--width", "1"])
