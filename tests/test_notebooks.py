"""The notebooks execute, at a small size, so they cannot rot."""

import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test command installs nbformat")
nbclient = pytest.importorskip("nbclient", reason="the test command installs nbclient")

from mpirun import ROOT  # noqa: E402

NOTEBOOKS = os.path.join(ROOT, "notebooks")


def execute(name, parameters, tmp_path):
    """Run a notebook with its parameters cell replaced; return it."""
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    cell = next(c for c in nb.cells if c.source.startswith("# Parameters"))
    cell.source = "# Parameters\n" + "\n".join(
        f"{k} = {v!r}" for k, v in parameters.items())
    os.environ["TMPI_NOTEBOOK_OUT"] = str(tmp_path)
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": NOTEBOOKS}}
                                ).execute()
    finally:
        del os.environ["TMPI_NOTEBOOK_OUT"]
    return nb


def test_keras_wresnet_ranks_notebook(tmp_path):
    nb = execute("keras_wresnet_ranks.ipynb", {"EPOCHS": 1, "RANKS": [1, 2]},
                 tmp_path)
    table = nb.cells[-1].outputs[0]["text"].splitlines()
    assert table[0].split() == ["ranks", "test", "acc", "samples/s", "wall", "s"]
    assert [row.split()[0] for row in table[1:]] == ["1", "2"]
    assert (tmp_path / "wrn_ranks.png").stat().st_size > 10_000
    assert (tmp_path / "wrn_2ranks.json").exists()


def test_rules_comparison_notebook(tmp_path):
    nb = execute("rules_comparison.ipynb",
                 {"RANKS": [2], "EPOCHS": [1],
                  "RULES": ["bsp", "easgd", "easgd-sync", "gosgd"]}, tmp_path)
    table = nb.cells[-1].outputs[-1]["data"]["text/markdown"].splitlines()
    assert len(table) == 2 + 4
    assert {row.split("|")[1].strip() for row in table[2:]} == {
        "bsp", "easgd", "easgd-sync", "gosgd"}
    assert (tmp_path / "rules.png").stat().st_size > 10_000


def test_scaling_model_notebook(tmp_path):
    nb = execute("scaling_model.ipynb", {
        "EXCHANGE_ARGS": "--sizes 64K,32M --no-wrn --no-gloo --repeats 5 "
                         "--warmup 1",
        "COMPUTE_ARGS": "--depth 10 --width 1 --input-size 8 --batch-size 4 "
                        "--steps 2 --repeats 1 --warmup 0",
        "MODELS": ["toy:100:10"], "RANKS": "2,8,1024"}, tmp_path)
    text = nb.cells[-1].outputs[0]["text"].splitlines()
    checks = [line for line in text if "predicted BSP speedup at 2" in line]
    assert [line.split(":")[0] for line in checks] == ["toy", "wrn_10_1"]
    assert "measured" in checks[1]          # the 2-rank check has a figure
    head = next(i for i, line in enumerate(text) if line.startswith("model"))
    assert text[head].split()[-3:] == ["2", "8", "1024"]
    rows = text[head + 2:]
    # 2 models x 3 networks (measured, 10 and 100 Gb/s) x 4 rules
    assert len(rows) == 24
    assert {row.split()[0] for row in rows} == {"toy", "wrn_10_1"}
    assert (tmp_path / "scaling_model.png").stat().st_size > 10_000
    # across hosts: the shipped run, both predictions recomputed, plotted
    hosts = next(c for c in nb.cells if "hosts_scaling.predict" in c.source)
    table = hosts.outputs[0]["text"]
    rows = [line.split() for line in table.splitlines()
            if line.split()[:1] in (["wrn"], ["vgg"])]
    assert {(r[0], r[1]) for r in rows} == {
        (m, p) for m in ("wrn", "vgg") for p in ("1x1", "2x1", "2x2")}
    assert (tmp_path / "hosts_scaling.png").stat().st_size > 10_000


def test_launch_wresnet_notebook(tmp_path):
    nb = execute("launch_wresnet.ipynb", {"EPOCHS": 1, "RANKS": 2}, tmp_path)
    launched = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert "final: test_accuracy=" in launched, launched   # rank 0 streamed
    text = "".join(o.get("text", "") for o in nb.cells[3].outputs)
    assert "2 ranks, " in text, text
    assert (tmp_path / "launch_wrn.png").stat().st_size > 10_000
    assert any("image/png" in o.get("data", {}) for o in nb.cells[3].outputs)
