"""Sweeps through Hydra's launcher and sweeper plugins: joblib, submitit_local, dns_optuna (dns.sweep)."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from hydra import initialize_config_module
from omegaconf import OmegaConf

from dns import sweep
from dns.cli import report_main

from conftest import composed, dns_train_argv

# a short LeNet-300-100 run (~5 s); optimizer.lr=50 makes one fail: its loss turns non-finite
SHORT = ["model=lenet300", "reference.iters=60", "surgery.iters=20", "finetune.iters=0", "log_every=10"]


def statuses(folder, count):
    return [json.loads((folder / str(n) / "report.json").read_text())["status"] for n in range(count)]


def config_of(folder, n):
    return json.loads((folder / str(n) / "report.json").read_text())["config"]


@pytest.mark.parametrize("args", [
    ["seed=1,2", "surgery.c=1,2,3", "model=lenet300"],
    ["seed=range(0,3)", "surgery.lr=1e-2", "surgery.layers=[fc1, fc2]", "+foo=bar"],
    ["seed=1,2", "surgery.c=1", "seed=3"],  # a key given twice: its first place, its last values
    ["surgery.c_per_layer={fc1: 5, fc2: 2}", "surgery.margin=0.1,0.2", "hydra.sweep.dir='a b'"],
])
def test_grid_jobs_are_hydras_own(args):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the test may look inside Hydra; dns not

    hydras = BasicSweeper.split_arguments(sweep.parse(args), None)[0]
    assert sweep.grid_jobs(args) == hydras  # the same jobs, in the same order, the same strings (directory names)


def test_a_glob_over_a_config_group_lists_its_options():
    with initialize_config_module(config_module="dns.conf", version_base="1.3"):  # as dns-train's check
        jobs = sweep.grid_jobs(["model=glob(lenet*)", "seed=0,1"])
    assert jobs == [["model=lenet300", "seed=0"], ["model=lenet300", "seed=1"],
                    ["model=lenet5", "seed=0"], ["model=lenet5", "seed=1"]]


def test_a_sweepers_params_come_first_and_a_grid_takes_no_range():
    plan = sweep.plan(["surgery.c=1,2"], {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                                          "params": {"seed": "0,1"}})
    assert plan.grid and plan.jobs == 4 and plan.configs[1] == ["seed=0", "surgery.c=2"]
    with pytest.raises(ValueError, match="a grid sweep takes lists of values"):
        sweep.grid_jobs(["surgery.c=interval(1,2)"])


def test_a_search_checks_its_fixed_settings_and_each_end_of_its_ranges():
    plan = sweep.plan(["model=lenet300", "surgery.lr=interval(0.005,0.02)", "seed=choice(0,1,2)",
                       "surgery.margin=range(0.1,0.3,0.1)"],
                      {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "n_trials": 7})
    assert not plan.grid and plan.jobs == 7
    base = ["model=lenet300", "surgery.lr=0.005", "seed=0", "surgery.margin=0.1"]
    assert plan.configs[0] == base
    assert [c for c in plan.configs[1:]] == [
        ["model=lenet300", "surgery.lr=0.02", "seed=0", "surgery.margin=0.1"],
        ["model=lenet300", "surgery.lr=0.005", "seed=1", "surgery.margin=0.1"],
        ["model=lenet300", "surgery.lr=0.005", "seed=2", "surgery.margin=0.1"],
        ["model=lenet300", "surgery.lr=0.005", "seed=0", "surgery.margin=0.2"],
        ["model=lenet300", "surgery.lr=0.005", "seed=0", "surgery.margin=0.3"]]  # Optuna's range holds its stop
    assert plan.searched == ["surgery.lr", "seed", "surgery.margin"] and plan.keys[0] == "model"


@pytest.mark.parametrize("launcher, cpus, threads", [
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 2, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 3}, 16, 5),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 16, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -3}, 16, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 8}, 2, 1),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", "cpus_per_task": 3}, 16, 3),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": None},
     16, None),
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 16, None),
])
def test_jobs_side_by_side_share_the_cores(launcher, cpus, threads):
    assert sweep.job_threads(launcher, cpus) == threads


def test_the_objective_is_the_error_or_error_and_compression():
    report = {"test": {"final_error": 0.0213}, "total": {"compression": 57.5}}
    assert sweep.objective(report, None) == 0.0213
    assert sweep.objective(report, "minimize") == 0.0213
    assert sweep.objective(report, OmegaConf.create(["minimize", "maximize"])) == (0.0213, 57.5)
    from hydra_plugins.hydra_optuna_sweeper.config import Direction  # Hydra's stock optuna sweeper: an enum
    assert sweep.objective(report, Direction.minimize) == 0.0213


class FakeTrial:
    """The part of optuna.Trial that dns_optuna's search space uses."""
    def __init__(self, params=None, user_attrs=None):
        self.params, self.user_attrs = dict(params or {}), dict(user_attrs or {})

    def suggest_float(self, name, low, high, step):
        self.params[name] = (low, high, step)


def test_dns_optuna_draws_c_of_every_layer_the_run_operates_on():
    trial = FakeTrial()
    sweep.c_per_layer_space(composed("model=lenet5"), trial)
    assert trial.params == {f"surgery.c_per_layer.{n}": (1.0, 7.0, 0.25) for n in ("conv1", "conv2", "fc1", "fc2")}
    trial = FakeTrial(user_attrs={"surgery.c_per_layer.fc1": "5"})  # given on the command line: kept
    sweep.c_per_layer_space(composed("model=lenet5", "surgery.layers=fc"), trial)
    assert list(trial.params) == ["surgery.c_per_layer.fc2"]
    trial = FakeTrial(params={"surgery.c": 2.0})  # surgery.c searched: no per-layer c would let it act
    sweep.c_per_layer_space(composed("model=lenet300"), trial)
    assert trial.params == {"surgery.c": 2.0}
    trial = FakeTrial(user_attrs={"surgery.c": "2"})  # surgery.c fixed: the layers' c are still drawn
    sweep.c_per_layer_space(composed("model=lenet300"), trial)
    assert len(trial.params) == 3


def test_dns_optuna_is_checked_against_what_it_can_draw():
    def runs(*configs):
        return [OmegaConf.to_object(composed(*c)) for c in configs]
    resnet = ("model=resnet20", "dataset=cifar10")
    searching_c = sweep.SweepPlan([], 5, grid=False, searched=["surgery.c"], keys=["surgery.c"])
    sweep.check_search_space(runs(resnet), searching_c)  # the ResNets: surgery.c searched, nothing drawn per layer
    with pytest.raises(ValueError, match=r"dotted names \(layer1.0.conv1\): search 'surgery.c=interval"):
        sweep.check_search_space(runs(resnet), sweep.SweepPlan([], 5, grid=False))
    with pytest.raises(ValueError, match="the searched settings change them"):
        sweep.check_search_space(runs(["model=lenet300"], ["model=lenet300", "surgery.layers=[fc1]"]),
                                 sweep.SweepPlan([], 5, grid=False, searched=["surgery.layers"]))


def test_a_joblib_sweep_runs_in_parallel_processes_and_counts_the_failed_job(dns_train, tmp_path):
    result = dns_train("-m", *SHORT, "optimizer.lr=0.01,50,0.02", "hydra.sweep.dir=sweep", "hydra/launcher=joblib",
                       "hydra.launcher.n_jobs=2")
    assert result.returncode == 1 and "1 job(s) failed: sweep/1 (failed)" in result.stderr, result.stderr
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    folder = tmp_path / "sweep"
    assert statuses(folder, 3) == ["completed", "failed", "completed"]
    expected = max(1, sweep.cores() // 2)
    for n in range(3):  # every job's directory complete, each job at its share of the cores
        assert {".hydra", "train.log", "history.csv", "report.json", "report.md"} <= {
            p.name for p in (folder / str(n)).iterdir()}
        assert config_of(folder, n)["threads"] == expected
        assert (folder / str(n) / "checkpoints" / "final.pt").is_file() == (n != 1)
    assert "non-finite loss" in (folder / "1" / "train.log").read_text()


def test_a_submitit_local_sweep_runs_each_job_as_its_own_process(dns_train, tmp_path):
    result = dns_train("-m", *SHORT, "optimizer.lr=0.01,50", "hydra.sweep.dir=sweep",
                       "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1")
    assert result.returncode == 1 and "1 job(s) failed: sweep/1 (failed)" in result.stderr, result.stderr
    folder = tmp_path / "sweep"
    assert statuses(folder, 2) == ["completed", "failed"]
    assert [config_of(folder, n)["threads"] for n in range(2)] == [1, 1]
    assert list((folder / ".submitit").iterdir())  # submitit's own logs and pickles, beside the jobs
    report_main([str(folder)])  # dns-report lists both jobs, the failed one too, and nothing of submitit's
    markdown = (folder / "dns_report.md").read_text()
    assert "| 0 | dns | completed |" in markdown and "| 1 | dns | failed |" in markdown and ".submitit" not in markdown


def test_a_dns_optuna_study_searches_per_layer_c_and_reports_its_front(dns_train, tmp_path):
    result = dns_train("-m", *SHORT, "reference.iters=300", "surgery.iters=60", "finetune.iters=100",
                       "surgery.layers=[fc1]", "hydra.sweep.dir=study", "hydra/sweeper=dns_optuna",
                       "hydra.sweeper.n_trials=3")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "study"
    assert statuses(folder, 3) == ["completed"] * 3
    reports = [json.loads((folder / str(n) / "report.json").read_text()) for n in range(3)]
    tried = [r["config"]["surgery"]["c_per_layer"] for r in reports]
    for c in tried:
        assert set(c) == {"fc1"} and all(1 <= v <= 7 and v * 4 == int(v * 4) for v in c.values())
    assert len({tuple(c.values()) for c in tried}) == 3  # three different settings
    assert len({r["test"]["final_error"] for r in reports}) == 3  # that end differently
    front = yaml.safe_load((folder / "optimization_results.yaml").read_text())["solutions"]
    points = {(r["test"]["final_error"], r["total"]["compression"]) for r in reports}
    assert front and all(tuple(s["values"]) in points for s in front)  # the values the study saw are the reports'
    report_main([str(folder)])
    markdown = (folder / "dns_report.md").read_text()
    assert markdown.count("| ★ |") == len(front)  # dns-report's front is the study's


def test_a_failed_trial_does_not_end_the_study(dns_train, tmp_path):
    result = dns_train("-m", *SHORT, "optimizer.lr=50", "hydra.sweep.dir=study", "hydra/sweeper=dns_optuna",
                       "hydra.sweeper.n_trials=2")
    assert result.returncode == 1 and "2 job(s) failed: study/0 (failed), study/1 (failed)" in result.stderr
    assert statuses(tmp_path / "study", 2) == ["failed", "failed"]
    assert yaml.safe_load((tmp_path / "study" / "optimization_results.yaml").read_text())["solutions"] == []


@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local"]])
def test_an_interrupted_sweep_resumes(data_root, dns_train, tmp_path, launcher):
    args = ["-m", "model=lenet300", "reference.iters=2000", "surgery.iters=100", "finetune.iters=0", "log_every=50",
            "checkpoint.every=50", "seed=1,2", "hydra.sweep.dir=sweep", *launcher]
    proc = subprocess.Popen(dns_train_argv(*args), cwd=tmp_path, start_new_session=True, text=True,
                            env={**os.environ, "DNS_DATA": str(data_root)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    folder = tmp_path / "sweep"
    deadline = time.time() + 240
    while time.time() < deadline and not all((folder / str(n) / "checkpoints" / "latest.pt").exists() for n in (0, 1)):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at the terminal: every process of the sweep gets it
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert statuses(folder, 2) == ["interrupted", "interrupted"]
    result = dns_train(*args, "resume=true")
    assert result.returncode == 0, result.stderr
    assert statuses(folder, 2) == ["completed", "completed"]
    for n in range(2):  # each went on from its checkpoint: every logged step once, in order
        rows = (folder / str(n) / "history.csv").read_text().splitlines()[1:]
        steps = [int(row.split(",")[1]) for row in rows]
        assert steps == list(range(50, 2101, 50))
