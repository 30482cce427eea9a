"""The Lasagne WGAN example trains on real ranks, stays in sync and clips."""

import json
import math
import re

import pytest

pytest.importorskip("theano", reason="Theano is tested in .venv-theano; "
                    "`make test` runs this file there too")
pytest.importorskip("lasagne", reason="Lasagne comes with Theano")

from mpirun import ROOT, run_mpi  # noqa: E402

SCRIPT = f"{ROOT}/zoo/lasagne_wgan.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_lasagne_wgan_trains_on_two_ranks(tmp_path):
    epochs, clip = 3, 0.01
    out = tmp_path / "wgan"
    history = tmp_path / "history.json"
    proc = run_mpi(SCRIPT, 2, "--epochs", epochs, "--iters-per-epoch", 10,
                   "--batch-size", 32, "--width", 64, "--clip", clip,
                   "--out", out, "--history", history, timeout=300)
    text = proc.stdout
    # rank 0 alone prints: one header, one line per epoch, one final line
    assert text.count("wgan_mlp:") == 1, text
    lines = re.findall(rf"^epoch (\d+)/{epochs} wasserstein (-?[\d.]+) "
                       r"samples/s ([\d.]+)$", text, re.M)
    assert [int(e) for e, _, _ in lines] == list(range(1, epochs + 1)), text
    assert all(float(s) > 0 for _, _, s in lines)
    final = re.search(r"^final: wasserstein=(-?[\d.]+) png=(\S+) ranks=2 "
                      r"wall_s=([\d.]+) params_identical=(\w+)$", text, re.M)
    assert final, text
    assert final.group(4) == "True"

    png = out / "samples.png"
    assert final.group(2) == str(png)
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5000             # a rendered 8x8 grid, not a stub

    record = json.loads(history.read_text())
    assert len(record["wasserstein"]) == epochs
    assert all(math.isfinite(w) for w in record["wasserstein"])
    assert record["wasserstein"][-1] == pytest.approx(
        float(final.group(1)), abs=1e-4)
    assert record["params_identical"] is True
    assert record["ranks"] == 2
    # every critic weight (and bias) lies in [-c, c] after the last update,
    # and the bound is active (Glorot's initial weights lie far outside it)
    assert record["critic_abs_max"] <= clip + 1e-7
    assert record["critic_abs_max"] == pytest.approx(clip, rel=1e-6)


def test_lasagne_wgan_rejects_a_bad_clip():
    proc = run_mpi(SCRIPT, 1, "--clip", "-0.01", check=False, timeout=120)
    assert proc.returncode != 0
    assert "--clip=-0.01 must be > 0" in proc.stderr
