"""The zoo's examples run end to end on real ranks and learn."""

import importlib.util
import re

import pytest

pytest.importorskip("keras", reason="the Keras zoo needs keras")

from mpirun import ROOT, run_mpi  # noqa: E402


def test_keras_wresnet_trains_on_two_ranks(tmp_path):
    proc = run_mpi(f"{ROOT}/zoo/keras_wresnet.py", 2, "--epochs", 4,
                   "--save", tmp_path / "wrn.keras", timeout=300)
    # digits, 4 epochs: well above 0.1
    check_output(proc.stdout, epochs=4, ranks=2, accuracy=0.8)
    assert (tmp_path / "wrn.keras").exists()


def check_output(out, *, epochs, ranks, accuracy):
    """The demo's stdout: rank 0 alone prints one header, one line per
    epoch and one final line, with a test accuracy above ``accuracy``."""
    assert out.count("wrn_10_2:") == 1
    assert len(re.findall(rf"^Epoch \d+/{epochs}$", out, re.M)) == epochs
    final = re.search(r"final: test_accuracy=([\d.]+) .*samples/s=([\d.]+) "
                      rf"ranks={ranks}", out)
    assert final, out
    assert float(final.group(1)) > accuracy
    assert float(final.group(2)) > 0


def test_keras_wresnet_on_shared_memory(tmp_path):
    proc = run_mpi(f"{ROOT}/zoo/keras_wresnet.py", 2, "--epochs", 2,
                   "--strategy", "shm", timeout=300)
    final = re.search(r"final: test_accuracy=([\d.]+) .*ranks=2",
                      proc.stdout)
    assert final, proc.stdout
    # digits, 2 epochs: well above chance (0.1); on JAX, whose initial
    # weights differ, 2 epochs reach 0.37 where torch reaches 0.5+
    assert float(final.group(1)) > 0.3


def test_keras_wresnet_rejects_a_bad_depth():
    # in this process, on one rank: an uncaught error ending the job with a
    # non-zero status is test_keras_faults' part
    spec = importlib.util.spec_from_file_location(
        "keras_wresnet", f"{ROOT}/zoo/keras_wresnet.py")
    wresnet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wresnet)
    with pytest.raises(ValueError, match=r"--depth=12 must be 6n\+4"):
        wresnet.main(["--depth", "12"])
