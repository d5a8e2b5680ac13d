"""dns-report over small real runs made here, a failed one among them."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dns.tables import Run, pareto_front, sweep_rows, table1_rows

from conftest import composed


def test_pareto_front_keeps_the_undominated_points():
    # (compression, error): the second is beaten by the third in both; the last ties nobody
    points = [(10.0, 0.010), (20.0, 0.020), (30.0, 0.015), (5.0, 0.009), (30.0, 0.015)]
    assert pareto_front(points) == [True, False, True, True, True]


def test_each_network_and_dataset_has_its_own_front():
    def run(name, model, compression, error, dataset="mnist", arch=None):
        report = {"status": "completed", "model": model, "arch": arch, "dataset": dataset,
                  "total": {"compression": compression, "params": 100, "remaining": round(100 / compression)},
                  "test": {"final_error": error, "reference_error": error},
                  "iterations": {"reference": 10, "surgery": 20, "finetune": 5}}
        return Run(Path(name), "completed", report, [])

    runs = [run("a", "lenet5", 120.0, 0.010), run("b", "lenet300", 57.0, 0.021), run("c", "lenet300", 50.0, 0.025),
            run("d", "resnet20", 3.0, 0.09, "cifar10"), run("e", "resnet20", 2.0, 0.30, "fashion_mnist"),
            run("f", "resnet20", 2.5, 0.10, "cifar10"), run("g", "torchvision", 2.0, 0.5, "cifar10", "resnet18"),
            run("h", "torchvision", 1.5, 0.6, "cifar10", "resnet50"), run("i", "lenet5", 20.0, 0.1, "fashion_mnist"),
            run("j", "torchvision", 9.0, 0.45, "imagenet", "alexnet")]
    # LeNet-5's run beats both LeNet-300-100 runs in both numbers, but only c is behind one of its own network;
    # e is alone on Fashion-MNIST, f behind d on CIFAR-10, and each torchvision architecture is a network of its own
    assert [r["pareto"] for r in sweep_rows(runs, Path("."))] == [True, True, False, True, True, False, True, True,
                                                                  True, True]
    assert [r["model"] for r in sweep_rows(runs, Path("."))][6:8] == ["torchvision resnet18", "torchvision resnet50"]
    rows = table1_rows(runs, Path("."))
    assert [r["network"] for r in rows if r["source"] in list("abcdefghij")] == [
        "LeNet-5", "LeNet-300-100", "LeNet-300-100", "resnet20 on cifar10", "resnet20 on cifar10",
        "resnet20 on fashion_mnist", "torchvision resnet18 on cifar10", "torchvision resnet50 on cifar10",
        "lenet5 on fashion_mnist", "torchvision alexnet on imagenet"]
    # the paper's rows stand beside its own models on its own datasets only (Caffe's AlexNet, not torchvision's)
    assert [r["network"] for r in rows if r["source"].startswith("paper")] == ["LeNet-5", "LeNet-300-100"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root):
    """A real three-job sweep over c, and beside it a run that died before writing its report."""
    root = tmp_path_factory.mktemp("sweep")
    exe = Path(sys.executable).with_name("dns-train")
    result = subprocess.run([str(exe) if exe.exists() else "dns-train", "-m", "model=lenet300",
                             "reference.iters=150", "surgery.iters=60", "finetune.iters=20", "eval_every=1000",
                             "surgery.c=0.5,2,4", "hydra.sweep.dir=sweep"],
                            cwd=root, capture_output=True, text=True, env={**os.environ, "DNS_DATA": str(data_root)})
    assert result.returncode == 0, result.stderr
    failed = root / "sweep" / "3" / ".hydra"
    failed.mkdir(parents=True)
    (failed / "overrides.yaml").write_text("- model=lenet300\n- surgery.c=8\n")
    return root / "sweep"


def test_report_tables_mark_the_front_and_list_failed_runs(sweep):
    exe = Path(sys.executable).with_name("dns-report")
    result = subprocess.run([str(exe) if exe.exists() else "dns-report", str(sweep)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    md = (sweep / "dns_report.md").read_text()
    assert md == result.stdout.split("written:")[0].rstrip("\n") + "\n"
    assert ("| LeNet-300-100 | dns | paper (Guo et al. 2016) | 2.28 % | 1.99 % | −0.29 | 266,610 | 4,800 | 56.0× | "
            "10K → 25K |") in md
    assert "| fc3 | 1,010 | 5.50 % |" in md  # the paper's Table 3 column beside ours
    assert "| 3 |  | incomplete | model=lenet300 surgery.c=8 |" in md

    rows = list(csv.DictReader(open(sweep / "dns_report.csv")))
    assert [r["run"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["status"] for r in rows] == ["completed"] * 3 + ["incomplete"]
    reports = [json.loads((sweep / str(i) / "report.json").read_text()) for i in range(3)]
    points = [(r["total"]["compression"], r["test"]["final_error"]) for r in reports]
    assert [r["pareto"] == "True" for r in rows[:3]] == pareto_front(points)
    assert float(rows[2]["compression"]) > float(rows[0]["compression"])  # c = 4 prunes more than c = 0.5
    for row, report in zip(rows, reports):  # each run's error against its own reference, in report.json and the tables
        test = report["test"]
        assert test["error_change"] == float(row["error_change"]) == round(test["final_error"] - test["reference_error"], 6)
        change = f"{100 * test['error_change']:+.2f}".replace("-", "−")
        assert f"| {100 * test['final_error']:.2f} % | {change} |" in md
        assert f"{change} points against the reference" in (sweep / row["run"] / "report.md").read_text()
    assert (sweep / "dns_report.png").read_bytes()[:4] == b"\x89PNG"


def test_report_of_nothing_is_an_error(tmp_path):
    exe = Path(sys.executable).with_name("dns-report")
    result = subprocess.run([str(exe) if exe.exists() else "dns-report", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "no run directories" in result.stderr


def test_reproduce_paper_gives_the_same_tables_twice(tmp_path, data_root):
    """The reproduction script end to end at tiny budgets: two runs, byte-identical tables."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_paper.sh"
    tiny = ["reference.iters=40", "surgery.iters=30", "finetune.iters=10", "eval_every=1000", "log_every=10"]
    tables = []
    for attempt in ("a", "b"):
        env = {**os.environ, "DNS_DATA": str(data_root), "SEEDS": "0,1", "RUNS": f"runs_{attempt}",
               "RESULTS": f"results_{attempt}", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        result = subprocess.run(["bash", str(script), *tiny], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        tables.append(((tmp_path / f"results_{attempt}" / "dns_report.md").read_text(),
                       (tmp_path / f"results_{attempt}" / "dns_report.csv").read_text()))
    assert tables[0] == tables[1]
    md = tables[0][0]
    assert "| LeNet-5 | dns | paper (Guo et al. 2016) |" in md and "| LeNet-300-100 | dns | paper (Guo et al. 2016) |" in md
    assert "mean ± std of paper_lenet5/0, paper_lenet5/1" in md
    # into the same runs, another recipe and one run again: a rerun recipe's folder emptied first, the others kept
    env = {**env, "RECIPES": "lenet300_shift paper_lenet300", "SEEDS": "0", "RESULTS": "results_both"}
    result = subprocess.run(["bash", str(script), *tiny], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tables of: lenet300_shift/ paper_lenet300/ paper_lenet5/" in result.stderr
    both = (tmp_path / "results_both" / "dns_report.md").read_text()
    assert "| LeNet-300-100 | dns | lenet300_shift/0 |" in both and "| LeNet-300-100 | dns | paper_lenet300/0 |" in both
    assert "paper_lenet300/1" not in both and "mean ± std of paper_lenet5/0, paper_lenet5/1" in both


@pytest.mark.parametrize("recipe, shift, solver", [
    ("paper_lenet5", 0, "caffe_sgd"), ("paper_lenet300", 0, "caffe_sgd"),  # the paper's data and solver
    ("lenet5_shift", 1, "sgd"), ("lenet300_shift", 1, "sgd"),             # the departure, in the name
    ("paper_lenet5_max", 0, "sgd"), ("paper_lenet300_max", 0, "sgd"),     # as they were measured
])
def test_recipe_names_say_what_they_run(recipe, shift, solver):
    cfg = composed(f"experiment={recipe}")
    assert (cfg.dataset.max_shift, cfg.optimizer.name) == (shift, solver)
    lenet5 = recipe.startswith(("paper_lenet5", "lenet5"))
    assert (cfg.reference.iters, cfg.surgery.iters, cfg.finetune.iters) == \
        ((10000, 14000, 2000) if lenet5 else (10000, 20000, 5000))  # the paper's iteration counts
    assert (cfg.surgery.gamma, cfg.surgery.power, cfg.surgery.layers) == (1e-4, 1.0, "all")
