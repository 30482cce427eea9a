"""tmpi_core.TrainingState on real ranks, without a framework: the stop
agreement stops every rank at the same step, and a checkpoint of each
rule's state round-trips exactly."""

import os

import pytest

from mpirun import run_mpi_json


@pytest.mark.parametrize("rule", ["bsp", "gosgd"])
def test_stop_agreement_and_checkpoint_round_trip(tmp_path, rule):
    ckpt = tmp_path / "ckpt"
    ranks = run_mpi_json("state_core.py", 2, tmp_path, "--ckpt", ckpt,
                         "--rule", rule, timeout=120)
    # rank 1 got the signal at step 3; the agreement is decided one round
    # later, at the same step on both ranks
    assert {r["stopped_at"] for r in ranks} == {4}, ranks
    for r in ranks:
        assert r["epoch"] == 2 and r["interrupted"] is True
        assert r["equal"], r                # every rank's own arrays back
        assert r["step"] == 5
        assert r["handler_back"]            # close() put SIGINT back
    assert len(os.listdir(ckpt)) == 1
