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


STEP_PHASES = ["model=lenet300", "reference.iters=10", "finetune.iters=10", "log_every=1", "eval_every=1000",
               "checkpoint.every=0", "lr_policy=step", "lr_policy.step_size=10", "lr_policy.gamma=0.5", "surgery.lr=0.01",
               "surgery.phases=[{layers:[fc1],iters:30},{layers:[fc2,fc3],iters:30}]"]


@pytest.mark.parametrize("restart, first_lr", [
    ("true", {"phase 1": 0.01, "phase 2": 0.01, "fine-tuning": 0.01 * 0.5 ** 3}),  # fine-tuning goes on with phase 2's
    ("false", {"phase 1": 0.01, "phase 2": 0.01 * 0.5 ** 3, "fine-tuning": 0.01 * 0.5 ** 6}),  # one schedule throughout
])
def test_each_phase_restarts_the_learning_rate_schedule_unless_told_not_to(tmp_path, data_root, restart, first_lr):
    run = completed_run(tmp_path, data_root, *STEP_PHASES, f"surgery.phase_restart={restart}")
    lr = {(row["stage"], row["iteration"]): row["lr"] for row in read_history(run / "history.csv")}
    seen = {"phase 1": lr["surgery", 0], "phase 2": lr["surgery", 30], "fine-tuning": lr["finetune", 60]}
    assert seen == pytest.approx(first_lr, rel=1e-12)


@pytest.mark.parametrize("restart", [True, False])
def test_each_phase_starts_its_momentum_from_zero_unless_told_not_to(tmp_path, data_root, monkeypatch, restart):
    from hydra import compose, initialize_config_module

    from dns.config import register_configs, validate
    from dns.train import Trainer, run

    momentum_at_checkpoints = []  # (stage, iteration, any momentum buffer): taken when each phase has begun
    checkpoint = Trainer.checkpoint

    def recording(trainer):
        momentum_at_checkpoints.append((trainer.stage, trainer.iteration, bool(trainer.optimizer.state)))
        checkpoint(trainer)

    monkeypatch.setattr(Trainer, "checkpoint", recording)
    register_configs()
    with initialize_config_module(config_module="dns.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*STEP_PHASES, f"dataset.root={data_root}",
                                                       f"surgery.phase_restart={restart}"])
    run(validate(cfg), tmp_path)
    assert momentum_at_checkpoints == [("surgery", 0, False), ("surgery", 30, not restart), ("finetune", 60, True),
                                       ("done", 70, True)]


def test_the_gate_counts_from_each_phases_start(tmp_path, data_root):
    """gamma 1e6: the gate is open at a phase's first iteration (sigma 1) and, at 1/(1 + 1e6·i), shut after it. Each
    phase's layers change their masks at that phase's first iteration and then stay: the gate's i is counted from
    the phase's start (counted from the surgery's, phase 2 would open at i = 30 with p = 3e-8: never)."""
    run = completed_run(tmp_path, data_root, *STEP_PHASES, "surgery.gamma=1e6", "surgery.c=0.5")
    rows = {row["iteration"]: row for row in read_history(run / "history.csv") if row["stage"] == "surgery"}
    assert [rows[i]["sigma"] for i in (0, 1, 30, 31)] == pytest.approx([1, 1 / (1 + 1e6), 1, 1 / (1 + 1e6)])
    fc1, fc2 = ([rows[i][f"{layer}_remaining_pct"] for i in range(60)] for layer in ("fc1", "fc2"))
    assert fc1[0] < 100 and set(fc1) == {fc1[0]}  # pruned at iteration 0, then frozen
    assert set(fc2[:30]) == {100.0} and fc2[30] < 100 and set(fc2[30:]) == {fc2[30]}  # pruned at iteration 30 alone


def test_the_learning_rate_runs_on_from_surgery_into_fine_tuning(tmp_path, data_root):
    run = completed_run(tmp_path, data_root, "model=lenet300", "reference.iters=10", "surgery.iters=30",
                        "finetune.iters=10", "log_every=1", "eval_every=1000", "checkpoint.every=0", "lr_policy=inv",
                        "lr_policy.gamma=0.1", "lr_policy.power=0.75", "surgery.lr=0.01")
    lr = {(row["stage"], row["iteration"]): row["lr"] for row in read_history(run / "history.csv")}
    assert [lr["surgery", i] for i in (0, 29)] + [lr["finetune", i] for i in (30, 39)] == pytest.approx(
        [0.01 * (1 + 0.1 * i) ** -0.75 for i in (0, 29, 30, 39)], rel=1e-12)
