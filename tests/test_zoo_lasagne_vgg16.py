"""The Lasagne VGG16 zoo example runs end to end on real ranks and learns."""

import json
import re

import pytest

pytest.importorskip(
    "theano", reason="Theano is tested in .venv-theano; `make test` runs this "
    "file there too")
pytest.importorskip("lasagne", reason="Lasagne comes with Theano")

from mpirun import ROOT, run_mpi  # noqa: E402

SCRIPT = f"{ROOT}/zoo/lasagne_vgg16.py"


def test_lasagne_vgg16_trains_on_two_ranks(tmp_path):
    history = tmp_path / "history.json"
    # A cold Theano cache costs about a minute of compiling on 2 cores.
    proc = run_mpi(SCRIPT, 2, "--epochs", 3, "--history", history,
                   timeout=400)
    out = proc.stdout
    # rank 0 alone prints: one header, one compile line, one line per epoch
    assert len(re.findall(r"^vgg16_w0\.125_32px: [\d,]+ parameters, 2 "
                          r"rank\(s\) x batch 32, ", out, re.M)) == 1, out
    assert len(re.findall(r"^compile: train step [\d.]+ s", out, re.M)) == 1
    epochs = re.findall(r"^epoch (\d)/3 loss [\d.]+ acc [\d.]+ test_acc "
                        r"[\d.]+ samples/s [\d.]+$", out, re.M)
    assert epochs == ["1", "2", "3"], out
    final = re.search(r"^final: test_accuracy=([\d.]+) samples/s=([\d.]+) "
                      r"ranks=2 wall_s=([\d.]+)$", out, re.M)
    assert final, out
    # digits, 3 epochs: 0.93-0.97 over seeds 0-3 and both modes; chance 0.1
    assert float(final.group(1)) > 0.8
    assert float(final.group(2)) > 0
    logs = json.loads(history.read_text())
    assert len(logs["history"]["test_accuracy"]) == 3
    assert logs["ranks"] == 2
    assert logs["test"]["accuracy"] == pytest.approx(float(final.group(1)),
                                                     abs=1e-4)


def test_lasagne_vgg16_rejects_a_bad_input_size():
    proc = run_mpi(SCRIPT, 1, "--input-size", 40, check=False, timeout=120)
    assert proc.returncode != 0
    assert "--input-size=40 must be a multiple of 32" in proc.stderr
