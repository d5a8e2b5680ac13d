"""dns-train as users run it: the installed console script, in a fresh working directory."""

import json

import pytest
import torch

QUICK = ["model=lenet300", "reference.iters=300", "surgery.iters=300", "finetune.iters=100",
         "eval_every=100", "log_every=50"]


def test_installed_script_composes_the_config(dns_train):
    result = dns_train("--cfg", "job", "model=lenet300", "surgery.c_per_layer={fc1:4}")
    assert result.returncode == 0, result.stderr
    assert "name: lenet300" in result.stdout and "fc1: 4.0" in result.stdout


BAD_INPUT = [
    (["model=vgg"], "unknown model 'vgg': use model=<alexnet|lenet300|lenet5>"),
    (["dataset=cifar"], "unknown dataset 'cifar'"),
    (["surgery.margin=1"], "surgery.margin=1.0 must lie in [0, 1)"),
    (["surgery.margin=-0.1"], "surgery.margin=-0.1 must lie in [0, 1)"),
    (["surgery.gamma=-1e-4"], "surgery.gamma=-0.0001 is negative"),
    (["surgery.power=-1"], "surgery.power=-1.0 is negative"),
    (["reference.iters=-1"], "reference.iters=-1 is negative"),
    (["surgery.iters=-10"], "surgery.iters=-10 is negative"),
    (["finetune.iters=-3"], "finetune.iters=-3 is negative"),
    (["surgery.c=high"], "Value 'high' of type 'str' could not be converted to Float"),
    (["surgery.c_per_layer={fc9:1}"], "surgery.c_per_layer names 'fc9', which is no layer of lenet5"),
    (["model=lenet300", "surgery.c_per_layer={conv1:1}"], "names 'conv1', which is no layer of lenet300"),
    (["surgery.layers=[conv1,fc7]"], "no layer named 'fc7'"),
    (["dataset.root=/nonexistent", "dataset.download=false"], "/nonexistent/MNIST/raw lacks"),
    (["reference.checkpoint=/nonexistent.pt"], "reference.checkpoint=/nonexistent.pt: no such file"),
    (["-m", "surgery.c=1,2", "surgery.margin=2"], "surgery.margin=2.0 must lie in [0, 1)"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(dns_train, tmp_path, args, message):
    result = dns_train(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dns-train: error: ") and message in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # no run directory, no outputs/


def test_a_short_run_on_real_mnist_writes_every_report(dns_train, tmp_path):
    result = dns_train(*QUICK, "surgery.c=2", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "completed" and report["model"] == "lenet300" and report["dataset"] == "mnist"
    assert report["iterations"] == {"reference": 300, "surgery": 300, "finetune": 100}
    test = report["test"]
    assert 0 < test["reference_error"] < 0.15 and 0 < test["final_error"] < 0.15  # learned MNIST
    assert report["total"]["compression"] > 3  # c = 2 cuts most connections
    assert [layer["name"] for layer in report["layers"]] == ["fc1", "fc2", "fc3"]
    for layer in report["layers"]:
        assert layer["a"] < layer["b"] and layer["pruned"] > 0 and layer["c"] == 2.0
        assert set(layer) >= {"name", "kind", "shape", "params", "remaining", "remaining_pct", "mu", "sigma",
                              "a", "b", "c", "pruned", "spliced"}

    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    recount = {name: int(final["masks"][f"{name}.weight"].sum() + final["masks"][f"{name}.bias"].sum())
               for name in ("fc1", "fc2", "fc3")}
    assert recount == {layer["name"]: layer["remaining"] for layer in report["layers"]}
    assert final["layers"]["fc1"]["a"] == report["layers"][0]["a"]
    assert torch.load(run / "checkpoints" / "reference.pt", weights_only=True)["stage"] == "reference"

    history = (run / "history.csv").read_text().splitlines()
    assert history[0].startswith("stage,step,iteration,lr,loss,train_error,sigma,remaining_pct,fc1_remaining_pct")
    assert len(history) == 1 + 6 + 6 + 2  # a row every 50 iterations of each stage
    assert "| **total** | **266,610** |" in (run / "report.md").read_text()
    for plot in ("remaining.png", "test_error.png"):
        assert (run / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_seed_gives_the_same_run(dns_train, tmp_path):
    for name in ("a", "b"):
        assert dns_train(*QUICK, "seed=3", f"hydra.run.dir={name}").returncode == 0
    a, b = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("a", "b"))
    assert a["layers"] == b["layers"] and a["test"] == b["test"]


def test_multirun_sweeps_c_into_three_runs(dns_train, tmp_path):
    result = dns_train("-m", *QUICK, "reference.iters=100", "surgery.iters=50", "finetune.iters=0",
                       "surgery.c=1,2,3")
    assert result.returncode == 0, result.stderr
    reports = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/report.json"))
    assert len(reports) == 3
    runs = [json.loads(p.read_text()) for p in reports]
    assert [r["config"]["surgery"]["c"] for r in runs] == [1.0, 2.0, 3.0]
    compression = [r["total"]["compression"] for r in runs]
    assert compression[0] < compression[1] < compression[2]  # a higher c prunes more


def test_the_report_measures_bytes_of_the_compact_file(dns_train, tmp_path):
    assert dns_train(*QUICK, "surgery.c=3", "hydra.run.dir=run").returncode == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    size = report["bytes"]
    assert size["dense_float32"] == 4 * 266610
    assert size["dns_float16"] < size["dns_float32"] < size["dense_float32"] / 5
    assert size["ratio_float32"] == size["dense_float32"] / size["dns_float32"]
    assert "Size on disk: 1,066,440 bytes dense" in (tmp_path / "run" / "report.md").read_text()
