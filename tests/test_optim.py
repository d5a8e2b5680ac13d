import csv
import math

import pytest
import torch
from torch import nn

from dns.config import LRPolicyConfig, OptimizerConfig
from dns.optim import CaffeSGD, anneal, build_optimizer, learning_rate, set_learning_rate


def test_learning_rate_policies():
    assert learning_rate(LRPolicyConfig("fixed"), 0.01, 5000) == 0.01
    assert learning_rate(LRPolicyConfig("inv", gamma=1e-4, power=0.75), 0.01, 10000) == pytest.approx(0.01 * 2 ** -0.75)
    step = LRPolicyConfig("step", gamma=0.1, step_size=100)
    assert [learning_rate(step, 1.0, i) for i in (0, 99, 100, 250)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    multistep = LRPolicyConfig("multistep", gamma=0.1, milestones=[32000, 48000])  # He et al.'s CIFAR schedule
    assert [learning_rate(multistep, 0.1, i) for i in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_anneal_factors():
    assert [anneal("none", done, 100) for done in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert [anneal("linear", done, 100) for done in (0, 25, 99)] == pytest.approx([1.0, 0.75, 0.01])
    assert [anneal("cosine", done, 100) for done in (0, 25, 50, 75)] == pytest.approx(
        [1.0, 0.5 + 0.5 * math.sqrt(0.5), 0.5, 0.5 - 0.5 * math.sqrt(0.5)])
    assert anneal("cosine", 99, 100) == pytest.approx(2.467e-4, rel=1e-3)  # the last step barely moves
    with pytest.raises(ValueError, match="unknown anneal 'exp'"):
        anneal("exp", 0, 10)


def run_two_steps(optimizer_cls):
    w = nn.Parameter(torch.tensor([1.0]))
    opt = optimizer_cls([w], lr=0.1, momentum=0.9, weight_decay=0.0)
    for lr in (0.1, 0.05):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = torch.tensor([1.0])
        opt.step()
    return w.item()


def test_caffe_sgd_keeps_the_learning_rate_inside_the_momentum():
    # Caffe: v1 = 0.1, w = 0.9; v2 = 0.9·0.1 + 0.05 = 0.14, w = 0.76
    assert run_two_steps(CaffeSGD) == pytest.approx(0.76)
    # torch: v1 = 1, w = 0.9; v2 = 0.9 + 1 = 1.9, w = 0.9 - 0.05·1.9 = 0.805
    assert run_two_steps(torch.optim.SGD) == pytest.approx(0.805)


def test_caffe_sgd_decays_weights_inside_the_update():
    w = nn.Parameter(torch.tensor([2.0]))
    opt = CaffeSGD([w], lr=0.1, momentum=0.9, weight_decay=0.5)
    w.grad = torch.tensor([1.0])
    opt.step()
    assert w.item() == pytest.approx(2.0 - 0.1 * (1.0 + 0.5 * 2.0))


def test_biases_learn_at_bias_lr_mult():
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, OptimizerConfig(name="caffe_sgd", bias_lr_mult=2.0), base_lr=0.01)
    set_learning_rate(opt, 0.005)
    lrs = {tuple(p.shape): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs == {(2, 3): 0.005, (2,): 0.01}


def test_weight_decay_overrides_the_optimizers():
    model = nn.Linear(3, 2)
    assert {g["weight_decay"] for g in build_optimizer(model, OptimizerConfig(), 0.01).param_groups} == {5e-4}
    assert {g["weight_decay"] for g in build_optimizer(model, OptimizerConfig(), 0.01, 2e-3).param_groups} == {2e-3}


def short_runs(dns_train, tmp_path, common: list[str], variants: dict[str, list[str]]) -> list[dict]:
    """The checkpoints/latest.pt of a short lenet300 run per variant (name -> its overrides beside `common`)."""
    common = ["model=lenet300", "reference.iters=20", "surgery.iters=20", "finetune.iters=10", "eval_every=1000",
              "log_every=10", *common]
    for name, extra in variants.items():
        result = dns_train(*common, *extra, f"hydra.run.dir={name}")
        assert result.returncode == 0, result.stderr
    return [torch.load(tmp_path / name / "checkpoints" / "latest.pt", weights_only=False) for name in variants]


def test_surgery_weight_decay_reaches_surgery_and_finetuning_alone(dns_train, tmp_path):
    plain, decayed = short_runs(dns_train, tmp_path, ["optimizer.weight_decay=0"],
                                {"plain": [], "decayed": ["surgery.weight_decay=0.5"]})
    assert {g["weight_decay"] for g in decayed["resume"]["optimizer"]["param_groups"]} == {0.5}
    references = [torch.load(tmp_path / name / "checkpoints" / "reference.pt", weights_only=True)["state_dict"]
                  for name in ("plain", "decayed")]
    for key in ("fc1.weight", "fc3.bias"):
        assert torch.equal(references[0][key], references[1][key])  # the reference trains without the decay
        # 30 iterations at lr ~0.01 and decay 0.5 shrink the dense weights by 14 % or more (momentum adds to it)
        assert decayed["state_dict"][key].norm() < 0.95 * plain["state_dict"][key].norm()


def test_finetune_weight_decay_takes_over_once_the_masks_are_frozen(dns_train, tmp_path):
    same, free = short_runs(dns_train, tmp_path, ["surgery.weight_decay=0.5"],
                            {"same": [], "free": ["finetune.weight_decay=0"]})
    assert {g["weight_decay"] for g in free["resume"]["optimizer"]["param_groups"]} == {0.0}
    assert {g["weight_decay"] for g in same["resume"]["optimizer"]["param_groups"]} == {0.5}
    for key in same["masks"]:
        assert torch.equal(same["masks"][key], free["masks"][key])  # surgery alike; fine-tuning moves no mask
    # 10 iterations without the decay of 0.5 leave the dense weights larger
    assert free["state_dict"]["fc1.weight"].norm() > 1.02 * same["state_dict"]["fc1.weight"].norm()


def test_finetune_anneal_lowers_the_learning_rate_of_finetuning_alone(dns_train, tmp_path):
    common = ["model=lenet300", "reference.iters=20", "surgery.iters=20", "finetune.iters=20", "eval_every=1000",
              "log_every=5", "lr_policy=fixed", "optimizer.lr=0.02"]
    rows = {}
    for name, extra in {"plain": [], "cosine": ["finetune.anneal=cosine"]}.items():
        result = dns_train(*common, *extra, f"hydra.run.dir={name}")
        assert result.returncode == 0, result.stderr
        with open(tmp_path / name / "history.csv") as f:
            rows[name] = list(csv.DictReader(f))
    plain, cosine = rows["plain"], rows["cosine"]
    assert [r["stage"] for r in plain] == [r["stage"] for r in cosine] == ["reference"] * 4 + ["surgery"] * 4 + ["finetune"] * 4
    assert plain[:8] == cosine[:8]  # reference and surgery untouched, bitwise
    # the row after fine-tuning iteration k (0-based) shows that iteration's rate: 0.02 · ½(1 + cos(π·k/20))
    assert [float(r["lr"]) for r in cosine[8:]] == pytest.approx(
        [0.02 * 0.5 * (1 + math.cos(math.pi * k / 20)) for k in (4, 9, 14, 19)])
    assert {float(r["lr"]) for r in plain[8:]} == {0.02}
    assert cosine[-1]["loss"] != plain[-1]["loss"]
