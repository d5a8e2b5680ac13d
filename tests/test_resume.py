"""Runs that stop — killed, interrupted, diverged — and go on: the resumed run ends bitwise identical."""

import json
import signal

import pytest
import torch
from conftest import assert_identical, completed_run, outcome, wait_for_surgery_checkpoint

SURGERY = ["model=lenet300", "reference.iters=200", "surgery.iters=1200", "finetune.iters=200", "surgery.c=2",
           "finetune.anneal=cosine", "dataset.max_shift=1",  # as the *_shift recipes: resumed runs see the same shifts
           "eval_every=400", "log_every=50", "checkpoint.every=50"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_root):
    """The uninterrupted run every resumed one must equal."""
    return outcome(completed_run(tmp_path_factory.mktemp("straight"), data_root, *SURGERY))


def test_sigkill_in_surgery_then_resume_ends_bitwise_identical(straight, start_dns_train, dns_train, tmp_path):
    process = start_dns_train(*SURGERY, "hydra.run.dir=run")
    wait_for_surgery_checkpoint(process, tmp_path / "run", 300)
    process.kill()
    process.wait()
    assert not (tmp_path / "run" / "report.json").exists()  # it had no chance to write anything more

    result = dns_train(*SURGERY, "hydra.run.dir=run", "resume=true")
    assert result.returncode == 0, result.stderr
    assert_identical(outcome(tmp_path / "run"), straight)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_reports_interrupted_and_resumes(straight, start_dns_train, dns_train, tmp_path, signum):
    process = start_dns_train(*SURGERY, "hydra.run.dir=run")
    wait_for_surgery_checkpoint(process, tmp_path / "run", 100)
    process.send_signal(signum)
    assert process.wait(timeout=60) == 128 + signum
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "interrupted" and report["stopped_at"]["stage"] in ("surgery", "finetune")
    assert "resume with resume=true hydra.run.dir=" in report["error"]
    latest = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert latest["resume"]["iteration"] == report["stopped_at"]["iteration"]  # saved where it stopped

    result = dns_train(*SURGERY, "hydra.run.dir=run", "resume=true")
    assert result.returncode == 0, result.stderr
    assert_identical(outcome(tmp_path / "run"), straight)


def test_non_finite_loss_fails_naming_stage_iteration_and_layer(dns_train, tmp_path):
    result = dns_train("model=lenet300", "optimizer.lr=50", "reference.iters=200", "checkpoint.every=10",
                       "hydra.run.dir=run")
    assert result.returncode == 1
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "failed"
    assert report["error"].startswith("non-finite loss at reference iteration ") and "layer fc" in report["error"]
    assert report["error"] in result.stderr
    stopped = report["stopped_at"]["iteration"]
    latest = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert 0 < latest["resume"]["iteration"] <= stopped  # the last good checkpoint stays
    assert all(torch.isfinite(w).all() for w in latest["state_dict"].values())


def test_a_layer_cut_to_nothing_is_flagged_and_min_remaining_prevents_it(dns_train, tmp_path):
    quick = ["model=lenet300", "reference.iters=100", "surgery.iters=100", "finetune.iters=0", "surgery.c=30",
             "log_every=50"]
    assert dns_train(*quick, "hydra.run.dir=cut").returncode == 0
    report = json.loads((tmp_path / "cut" / "report.json").read_text())
    assert [layer["cut"] for layer in report["layers"]] == [True, True, True]
    assert report["warnings"][0].startswith("fc1 has no weight left at surgery iteration")

    result = dns_train(*quick, "surgery.min_remaining=0.01", "surgery.min_remaining_per_layer={fc3:0.2}",
                       "hydra.run.dir=kept")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "kept" / "report.json").read_text())
    assert [layer["weight_remaining"] for layer in report["layers"]] == [2352, 300, 200]  # 1 % of weights, fc3 20 %
    assert report["warnings"] == [] and not any(layer["cut"] for layer in report["layers"])


def test_a_failed_job_does_not_hide_the_others_of_a_sweep(dns_train, tmp_path):
    result = dns_train("-m", "model=lenet300", "reference.iters=60", "surgery.iters=20", "finetune.iters=0",
                       "log_every=10", "optimizer.lr=0.01,50,0.02", "hydra.sweep.dir=sweep")
    assert result.returncode == 1 and "1 job(s) failed" in result.stderr
    assert "dns-train: failed: non-finite" in result.stderr  # the failed job's reason, not only in its report
    statuses = [json.loads((tmp_path / "sweep" / str(n) / "report.json").read_text())["status"] for n in range(3)]
    assert statuses == ["completed", "failed", "completed"]

    from dns.cli import report_main
    report_main([str(tmp_path / "sweep")])
    markdown = (tmp_path / "sweep" / "dns_report.md").read_text()
    assert "| 1 | dns | failed | model=lenet300 reference.iters=60 surgery.iters=20 finetune.iters=0 log_every=10 optimizer.lr=50 |" in markdown
