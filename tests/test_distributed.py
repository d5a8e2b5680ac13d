"""Data-parallel runs under torchrun: two CPU processes (gloo) end with the same weights and masks."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import dns_train_argv

from dns.distributed import fingerprint
from dns.surgeon import Surgeon
from dns.models import get_model


def test_the_fingerprint_sees_a_single_mask_bit():
    model = get_model("lenet300")
    Surgeon(model, layers=[])
    twin = copy.deepcopy(model)
    assert fingerprint(model) == fingerprint(twin)
    twin.fc2.weight_mask[3, 7] = 0
    assert fingerprint(model) != fingerprint(twin)


def test_two_gloo_processes_end_with_identical_weights_and_masks(data_root, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun) if torchrun.exists() else "torchrun", "--standalone", "--nproc_per_node=2",
               "--no-python", *dns_train_argv(
                   "model=lenet300", "reference.iters=100", "finetune.iters=50", "eval_every=100", "log_every=50",
                   "surgery.phases=[{layers:[fc1],iters:100,c:2},{layers:[fc2,fc3],iters:100,c:1}]",
                   "hydra.run.dir=run")]
    env = {**os.environ, "DNS_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr

    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "completed"
    assert report["distributed"] == {"world_size": 2, "ranks_identical": True}
    assert [phase["layers"] for phase in report["phases"]] == [["fc1"], ["fc2", "fc3"]]
    assert all(layer["remaining_pct"] < 100 for layer in report["layers"])  # surgery did operate
    # rank 0 alone wrote: one run directory, one history
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert (tmp_path / "run" / "history.csv").read_text().count("stage,step") == 1
