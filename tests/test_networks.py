"""The networks pruning research measures on, end to end through dns-train: a CIFAR ResNet on CIFAR-10 files, a
torchvision ResNet-18 on an ImageFolder, and a ResNet-20 on Fashion-MNIST; each writes every report."""

import csv
import json
import signal
import subprocess
from pathlib import Path

import torch
import torchvision
from conftest import assert_identical, dns_train_argv, outcome, wait_for_surgery_checkpoint
from test_cifar import fake_cifar10, fake_cifar100
from test_data import fake_fashion_mnist

import dns
from dns.models import get_model


def tool(name: str) -> str:
    return str(Path(dns_train_argv()[0]).with_name(name))


def check_every_report(run: Path, stages=("reference", "surgery", "finetune")) -> dict:
    """report.json completed, report.md, history.csv with rows of `stages`, both plots; returns the report."""
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "completed", report.get("error")
    name = f"torchvision {report['arch']}" if report["arch"] else report["model"]
    assert (run / "report.md").read_text().startswith(f"# {name} on {report['dataset']}: completed")
    with open(run / "history.csv") as f:
        assert {row["stage"] for row in csv.DictReader(f)} == set(stages)
    assert all((run / "plots" / name).read_bytes()[:4] == b"\x89PNG" for name in ("remaining.png", "test_error.png"))
    assert all((run / "checkpoints" / f"{name}.pt").is_file() for name in ("reference", "final", "latest"))
    return report


CIFAR_RUN = ["model=resnet20", "dataset=cifar10", "dataset.download=false", "dataset.batch_size=16",
             "dataset.test_batch_size=10", "reference.iters=4", "surgery.iters=4", "finetune.iters=2",
             "optimizer.lr=0.1", "optimizer.weight_decay=1e-4", "lr_policy=multistep", "lr_policy.milestones=[3,5]",
             "surgery.c=0.5", "surgery.exclude=[conv1,fc]", "surgery.c_per_layer={layer3.*:1,*.conv2:0.2}",
             "surgery.gamma=0", "log_every=2", "eval_every=4", "checkpoint.every=0"]


def test_resnet20_on_cifar10_files_runs_end_to_end(dns_train, tmp_path):
    fake_cifar10(tmp_path / "data", n_train=16, n_test=20)
    root = f"dataset.root={tmp_path / 'data'}"
    result = dns_train(*CIFAR_RUN, root, "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    report = check_every_report(run)
    assert (report["model"], report["arch"], report["dataset"]) == ("resnet20", None, "cifar10")

    layers = {row["name"]: row for row in report["layers"]}
    assert len(layers) == 20 and list(layers)[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert list(layers)[-1] == "fc" and layers["fc"]["shape"] == [10, 64]
    # exclude keeps the stem and the classifier dense; the most specific key sets each c
    assert [layers[n]["remaining_pct"] for n in ("conv1", "fc")] == [100.0, 100.0]
    assert not layers["conv1"]["under_surgery"] and not layers["fc"]["under_surgery"]
    assert {n: row["c"] for n, row in layers.items() if row["under_surgery"]} == {
        n: 1.0 if n.startswith("layer3.") else 0.2 if n.endswith(".conv2") else 0.5 for n in list(layers)[1:-1]}
    # ('layer3.*' has 7 literal characters, '*.conv2' 6: layer3's conv2 layers take 1)
    assert all(row["remaining_pct"] < 100 for row in report["layers"][1:-1])  # gamma 0: every step operated
    # BatchNorm is listed as dense, and compression is given over the prunable layers and over all parameters
    model = get_model("resnet20")
    bn = {n: sum(p.numel() for p in m.parameters()) for n, m in model.named_modules()
          if isinstance(m, torch.nn.BatchNorm2d)}
    assert [(r["name"], r["kind"], r["params"], r["remaining"]) for r in report["dense_layers"]] == [
        (n, "BatchNorm2d", count, count) for n, count in bn.items()]
    total = report["total"]
    assert total["model_params"] == sum(p.numel() for p in model.parameters()) == total["params"] + sum(bn.values())
    assert total["model_remaining"] == total["remaining"] + sum(bn.values())
    assert 1 < total["model_compression"] < total["compression"]
    assert f"BatchNorm2d ×19, not masked | {sum(bn.values()):,} |" in (run / "report.md").read_text()
    # the multistep learning rate: x0.1 at iteration 3 of the reference, then anew from surgery.lr (here 0.1)
    with open(run / "history.csv") as f:
        lr = {(row["stage"], int(row["iteration"])): float(row["lr"]) for row in csv.DictReader(f)}
    assert lr[("reference", 1)] == 0.1 and abs(lr[("reference", 3)] - 0.01) < 1e-12
    assert lr[("surgery", 1)] == 0.1 and abs(lr[("surgery", 3)] - 0.01) < 1e-12

    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    assert final["model_args"] == {"num_classes": 10, "in_channels": 3}
    evaluated = subprocess.run([tool("dns-eval"), str(run / "checkpoints" / "final.pt"), "dataset=cifar10", root,
                                "--json"], capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test"]["final_error"] == report["test"]["final_error"]
    exported = subprocess.run([tool("dns-export"), str(run / "checkpoints" / "final.pt"), "--out", "r20.dns"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr
    loaded = dns.load(tmp_path / "r20.dns")  # names its architecture: no model= needed
    masked = {k: v * final["masks"][k] if k in final["masks"] else v for k, v in final["state_dict"].items()}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in masked.items() if v.is_floating_point())
    # dns-eval reads the .dns file (masks on conv and fc alone, the dataset from its header) to the same error
    evaluated = subprocess.run([tool("dns-eval"), str(tmp_path / "r20.dns"), root, "--json"],
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads(evaluated.stdout)
    assert again["test"]["final_error"] == report["test"]["final_error"]
    assert again["total"]["remaining"] == report["total"]["remaining"] and len(again["dense_layers"]) == 19
    half = subprocess.run([tool("dns-export"), str(run / "checkpoints" / "final.pt"), "--out", "r20h.dns",
                           "--float16"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert half.returncode == 0 and "RuntimeWarning" not in half.stderr, half.stderr
    assert torch.equal(dns.load(tmp_path / "r20h.dns").bn1.running_var, final["state_dict"]["bn1.running_var"].half().float())

    tables = subprocess.run([tool("dns-report"), str(run)], capture_output=True, text=True, timeout=600)
    assert tables.returncode == 0, tables.stderr
    assert f"| resnet20 on cifar10 | dns | run | {100 * report['test']['reference_error']:.2f} % |" in tables.stdout
    assert "## resnet20 on cifar10: remaining % per layer" in tables.stdout


def test_resnet20_on_cifar10_resumes_bitwise_after_sigkill(dns_train, start_dns_train, tmp_path):
    fake_cifar10(tmp_path / "data", n_train=16, n_test=10)
    args = [*CIFAR_RUN, f"dataset.root={tmp_path / 'data'}", "surgery.iters=40", "checkpoint.every=5",
            "surgery.gamma=1e-2"]
    straight = dns_train(*args, "hydra.run.dir=straight")
    assert straight.returncode == 0, straight.stderr
    process = start_dns_train(*args, "hydra.run.dir=run")
    wait_for_surgery_checkpoint(process, tmp_path / "run", 10)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "run" / "report.json").exists()
    result = dns_train(*args, "hydra.run.dir=run", "resume=true")
    assert result.returncode == 0, result.stderr
    assert_identical(outcome(tmp_path / "run"), outcome(tmp_path / "straight"))  # crops, flips, BatchNorm stats


def test_torchvision_resnet18_on_an_image_folder_runs_end_to_end(image_folder, dns_train, tmp_path):
    torch.manual_seed(7)
    weights = torchvision.models.resnet18(num_classes=3).state_dict()
    torch.save(weights, tmp_path / "resnet18.pth")
    dataset = [f"dataset.root={image_folder}", "dataset.num_classes=3", "dataset.test_batch_size=3",
               "dataset.workers=0", "dataset.batch_size=4", "dataset.image_size=64", "dataset.resize_size=72"]
    result = dns_train("model=torchvision", "model.arch=resnet18", f"model.weights={tmp_path / 'resnet18.pth'}",
                       "dataset=imagenet", *dataset, "reference.iters=0", "surgery.iters=2", "finetune.iters=1",
                       "surgery.layers=[layer4.*]", "surgery.gamma=0", "checkpoint.every=0", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    report = check_every_report(run, stages=("surgery", "finetune"))  # reference.iters=0: the weights file is it
    assert (report["model"], report["arch"]) == ("torchvision", "resnet18")
    names = [row["name"] for row in report["layers"]]
    assert names[0] == "conv1" and "layer2.0.downsample.0" in names and names[-1] == "fc" and len(names) == 21
    operated = [row["name"] for row in report["layers"] if row["remaining_pct"] < 100]
    assert operated and all(name.startswith("layer4.") for name in operated)
    assert len(report["dense_layers"]) == 20  # the BatchNorm layers
    assert report["total"]["model_params"] == sum(p.numel() for p in torchvision.models.resnet18(num_classes=3).parameters())
    reference = torch.load(run / "checkpoints" / "reference.pt", weights_only=True)
    assert all(torch.equal(reference["state_dict"][k], v) for k, v in weights.items())  # it started from the file
    assert reference["model_args"] == {"num_classes": 3, "in_channels": 3, "arch": "resnet18", "weights": None}
    # dns-eval evaluates as the run did (64×64 crops, 3 classes) without being told
    evaluated = subprocess.run([tool("dns-eval"), str(run / "checkpoints" / "final.pt"), f"dataset.root={image_folder}",
                                "dataset.workers=0", "--json"], capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test"] == {k: report["test"][k] for k in ("final_error", "final_top5_error")}
    tables = subprocess.run([tool("dns-report"), str(run)], capture_output=True, text=True, timeout=600)
    assert tables.returncode == 0, tables.stderr
    assert "| torchvision resnet18 on imagenet | dns | run |" in tables.stdout


def test_resnet20_on_fashion_mnist_takes_one_channel(dns_train, tmp_path):
    fake_fashion_mnist(tmp_path / "data", n_train=32, n_test=10)
    result = dns_train("model=resnet20", "dataset=fashion_mnist", f"dataset.root={tmp_path / 'data'}",
                       "dataset.download=false", "dataset.batch_size=8", "dataset.test_batch_size=10",
                       "reference.iters=2", "surgery.iters=2", "finetune.iters=2", "log_every=1", "eval_every=2",
                       "checkpoint.every=0", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    report = check_every_report(tmp_path / "run")
    assert report["layers"][0]["shape"] == [16, 1, 3, 3]  # the stem takes the dataset's single channel
    assert report["test"]["final_error"] in {k / 10 for k in range(11)}
    # dns-eval takes the dataset the checkpoint was trained on (here fashion_mnist) unless told otherwise
    evaluated = subprocess.run([tool("dns-eval"), str(tmp_path / "run" / "checkpoints" / "final.pt"),
                                f"dataset.root={tmp_path / 'data'}", "dataset.download=false", "--json"],
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test"]["final_error"] == report["test"]["final_error"]


def test_a_cifar_run_with_too_few_classes_is_refused(dns_train, tmp_path):
    fake_cifar100(tmp_path / "data")
    result = dns_train("model=resnet20", "dataset=cifar100", f"dataset.root={tmp_path / 'data'}",
                       "dataset.download=false", "dataset.num_classes=10", "hydra.run.dir=run")
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    assert result.stderr.strip() == ("dns-train: error: dataset.num_classes=10, but cifar100 has 100 classes: "
                                     "set dataset.num_classes=100")
