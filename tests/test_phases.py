"""Phased surgery end to end: one group of layers after the other, the others' masks frozen meanwhile."""

import json

import pytest
from conftest import assert_identical, completed_run, outcome, wait_for_surgery_checkpoint

from dns.report import read_history

PHASED = ["model=lenet300", "reference.iters=200", "finetune.iters=100", "eval_every=150", "log_every=50",
          "checkpoint.every=50", "surgery.phases=[{layers:[fc1],iters:300,c:2},{layers:[fc2,fc3],iters:300,c:1}]"]


@pytest.fixture(scope="module")
def phased(tmp_path_factory, data_root):
    """An uninterrupted phased run: its run directory."""
    return completed_run(tmp_path_factory.mktemp("phased"), data_root, *PHASED)


def test_each_phase_operates_on_its_layers_alone_and_the_reports_show_it(phased):
    report = json.loads((phased / "report.json").read_text())
    first, second = report["phases"]
    assert (first["layers"], second["layers"], report["iterations"]["surgery"]) == (["fc1"], ["fc2", "fc3"], 600)
    assert first["remaining_pct"]["fc1"] < 50 and first["remaining_pct"]["fc2"] == first["remaining_pct"]["fc3"] == 100
    assert second["remaining_pct"]["fc2"] < 100 and second["remaining_pct"]["fc3"] < 100
    final = {layer["name"]: layer["remaining_pct"] for layer in report["layers"]}
    assert final["fc1"] == first["remaining_pct"]["fc1"] == second["remaining_pct"]["fc1"]  # frozen after phase 1

    rows = [row for row in read_history(phased / "history.csv") if row["stage"] == "surgery"]
    assert [row["phase"] for row in rows] == ["fc1"] * 6 + ["fc2,fc3"] * 6
    assert len({row["fc1_remaining_pct"] for row in rows[6:]}) == 1
    assert {row["fc2_remaining_pct"] for row in rows[:6]} == {100.0}
    assert "| 2 | fc2, fc3 | 300 |" in (phased / "report.md").read_text()


def test_killed_in_the_second_phase_and_resumed_ends_bitwise_identical(phased, start_dns_train, dns_train, tmp_path):
    process = start_dns_train(*PHASED, "hydra.run.dir=run")
    wait_for_surgery_checkpoint(process, tmp_path / "run", 400)  # 100 iterations into phase 2
    process.kill()
    process.wait()
    result = dns_train(*PHASED, "hydra.run.dir=run", "resume=true")
    assert result.returncode == 0, result.stderr
    assert_identical(outcome(tmp_path / "run"), outcome(phased))
