"""Every method end to end through dns-train from one dense reference, killed mid-run and resumed bitwise; and the
comparison in dns-report (a method column, one Pareto front per method)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_identical, completed_run, outcome, wait_for_surgery_checkpoint

COMMON = ["model=lenet300", "surgery.iters=1200", "finetune.iters=200", "eval_every=400", "log_every=50",
          "checkpoint.every=50"]
METHODS = {
    "dns-nosplice": ["surgery.c=1", "surgery.splice=false"],
    "han": ["method=han", "method.quality_per_layer={fc1:2,fc2:1.5,fc3:1}", "method.rounds=3",
            "method.round_iters=400"],
    "gmp": ["method=gmp", "method.final_sparsity=0.95", "method.final_sparsity_per_layer={fc3:0.8}",
            "method.every=100", "method.end=800"],
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root) -> Path:
    run = completed_run(tmp_path_factory.mktemp("reference"), data_root, "model=lenet300", "reference.iters=300",
                        "surgery.iters=0", "finetune.iters=0")
    return run / "checkpoints" / "reference.pt"


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_root, reference) -> dict[str, Path]:
    """Each method run to its end, uninterrupted, from the same reference."""
    return {method: completed_run(tmp_path_factory.mktemp(method), data_root, *COMMON, *args,
                                  f"reference.checkpoint={reference}")
            for method, args in METHODS.items()}


def test_each_method_prunes_by_its_own_rule(straight):
    reports = {m: json.loads((run / "report.json").read_text()) for m, run in straight.items()}
    for method, report in reports.items():
        assert report["status"] == "completed" and report["method"] == method
        assert report["iterations"]["surgery"] == 1200
        assert f"Method: {method}." in (straight[method] / "report.md").read_text()
        assert all(layer["spliced"] == 0 for layer in report["layers"])  # none of them splices
    han = {layer["name"]: layer for layer in reports["han"]["layers"]}
    assert {n: layer["c"] for n, layer in han.items()} == {"fc1": 2.0, "fc2": 1.5, "fc3": 1.0}
    assert han["fc1"]["a"] == pytest.approx(2.0 * han["fc1"]["sigma"])  # the last round: quality × std
    gmp = {layer["name"]: layer for layer in reports["gmp"]["layers"]}
    assert [round(gmp[n]["remaining"] / gmp[n]["params"], 4) for n in ("fc1", "fc2", "fc3")] == [0.05, 0.05, 0.2]
    assert "| final sparsity |" in (straight["gmp"] / "report.md").read_text()
    history = (straight["gmp"] / "history.csv").read_text().splitlines()
    assert history[1].split(",")[6] == ""  # no σ(i) gate outside DNS

    final = torch.load(straight["han"] / "checkpoints" / "final.pt", weights_only=True)
    for name in ("fc1.weight", "fc2.weight", "fc3.bias"):  # pruned weights held at exactly zero
        assert torch.equal(final["state_dict"][name] * (~final["masks"][name]), torch.zeros_like(final["state_dict"][name]))


@pytest.mark.parametrize("method", list(METHODS))
def test_sigkill_then_resume_ends_bitwise_identical(straight, reference, start_dns_train, dns_train, tmp_path, method):
    args = [*COMMON, *METHODS[method], f"reference.checkpoint={reference}", "hydra.run.dir=run"]
    process = start_dns_train(*args)
    wait_for_surgery_checkpoint(process, tmp_path / "run", 500)  # han: after its second round began
    process.kill()
    process.wait()
    result = dns_train(*args, "resume=true")
    assert result.returncode == 0, result.stderr
    assert_identical(outcome(tmp_path / "run"), outcome(straight[method]))


def test_dns_report_sets_the_methods_side_by_side(straight, tmp_path):
    exe = Path(sys.executable).with_name("dns-report")
    result = subprocess.run([str(exe) if exe.exists() else "dns-report", *map(str, straight.values()),
                             "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    md = (tmp_path / "dns_report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| LeNet-300-100 |")]
    assert [row.split(" | ")[1] for row in rows] == ["dns", "dns-nosplice", "han", "gmp"]  # the paper's row first
    runs = [line for line in md.splitlines() if line.endswith("★ |")]
    assert len(runs) == 3  # alone in its method, each run is on its own front
    assert (tmp_path / "dns_report.png").stat().st_size > 10_000


def test_a_baselines_checkpoint_gives_dns_no_settings(straight, dns_train):
    final = straight["han"] / "checkpoints" / "final.pt"
    result = dns_train("model=lenet300", f"reference.checkpoint={final}", "reference.surgery_settings=true")
    assert result.returncode == 2
    assert "was pruned by method=han, whose settings are not DNS's" in result.stderr


def test_a_run_saved_before_the_baselines_resumes_as_dns_only(reference, dns_train, tmp_path):
    """A checkpoint whose config has no `method` nor `surgery.splice` (saved before 2026-12-04) was DNS with splicing:
    resuming it without splicing is refused, as DNS it goes on."""
    run = reference.parent.parent
    args = ["model=lenet300", "reference.iters=300", "surgery.iters=0", "finetune.iters=0"]
    copy = tmp_path / "old"
    copy.mkdir()
    (copy / "checkpoints").mkdir()
    latest = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    del latest["config"]["method"], latest["config"]["surgery"]["splice"], latest["config"]["surgery"]["phase_restart"]
    torch.save(latest, copy / "checkpoints" / "latest.pt")
    result = dns_train(*args, "surgery.splice=false", f"hydra.run.dir={copy}", "resume=true")
    assert result.returncode == 2 and "surgery.splice=True, not False" in result.stderr, result.stderr
    assert dns_train(*args, f"hydra.run.dir={copy}", "resume=true").returncode == 0  # one phase: phase_restart moot


def test_a_phased_run_saved_before_phase_restart_resumes_as_one_solver_run(reference, dns_train, tmp_path):
    """Phases were one solver run before surgery.phase_restart: resuming such a run with the new default (a fresh
    solver per phase) would change it halfway, so it is refused; with phase_restart=false it goes on."""
    phases = "surgery.phases=[{layers:[fc1],iters:20},{layers:[fc2,fc3],iters:20}]"
    args = ["model=lenet300", "reference.iters=300", "finetune.iters=0", phases]
    copy = tmp_path / "old"
    (copy / "checkpoints").mkdir(parents=True)
    latest = torch.load(reference.parent / "latest.pt", weights_only=True)
    surgery = latest["config"]["surgery"]  # as a phased run saved before phase_restart: everything else the same
    unset = {"c": None, "c_per_layer": {}, "iter_stop": None, "gamma": None, "power": None}
    surgery["iters"], surgery["phases"] = 40, [{"layers": ["fc1"], "iters": 20, **unset},
                                               {"layers": ["fc2", "fc3"], "iters": 20, **unset}]
    del surgery["phase_restart"]
    torch.save(latest, copy / "checkpoints" / "latest.pt")
    result = dns_train(*args, f"hydra.run.dir={copy}", "resume=true")
    assert result.returncode == 2 and "surgery.phase_restart=False, not True" in result.stderr, result.stderr
