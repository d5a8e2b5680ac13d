"""Optimizers and learning-rate policies, following Caffe's SGD solver where the paper did."""

from __future__ import annotations

import bisect
import math
from typing import Iterable

import torch
from torch import nn

from dns.config import LRPolicyConfig, OptimizerConfig


def learning_rate(policy: LRPolicyConfig, base_lr: float, iteration: int) -> float:
    """Caffe's lr_policy at `iteration` of a run (a pure function of the iteration, as in timm)."""
    if policy.name == "fixed":
        return base_lr
    if policy.name == "inv":
        return base_lr * math.pow(1.0 + policy.gamma * iteration, -policy.power)
    if policy.name == "step":
        return base_lr * math.pow(policy.gamma, iteration // policy.step_size)
    if policy.name == "multistep":  # Caffe's multistep, torch's MultiStepLR: gamma once per milestone passed
        return base_lr * math.pow(policy.gamma, bisect.bisect_right(policy.milestones, iteration))
    raise ValueError(f"unknown lr_policy {policy.name!r}")


def anneal(shape: str, done: int, total: int) -> float:
    """The factor on the learning rate after `done` of `total` fine-tuning iterations: from 1 down towards 0.

    Fine-tuning a net this sparse ends on the noise of SGD at the policy's rate; letting the rate fall to 0
    settles it (cosine: SGDR, Loshchilov & Hutter 2017). 'none' keeps the policy's rate.
    """
    if shape == "none" or total <= 0:
        return 1.0
    progress = done / total
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown anneal {shape!r}")


class CaffeSGD(torch.optim.Optimizer):
    """Caffe's SGD: v = momentum·v + lr·(g + weight_decay·w); w -= v.

    torch.optim.SGD keeps lr outside the velocity (v = momentum·v + g; w -= lr·v); the two agree
    while lr is constant and differ whenever the learning-rate policy changes it.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"]).mul_(group["lr"])
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = update
                else:
                    state["velocity"].mul_(group["momentum"]).add_(update)
                p.sub_(state["velocity"])


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, base_lr: float,
                    weight_decay: float | None = None) -> torch.optim.Optimizer:
    """The optimizer over all of the model's dense parameters; biases (the 1-d ones) at bias_lr_mult·lr.
    `weight_decay` overrides cfg.weight_decay (the surgery's may differ from the reference's)."""
    weights = [p for p in model.parameters() if p.dim() > 1]
    biases = [p for p in model.parameters() if p.dim() == 1]
    groups = [dict(params=weights, lr_mult=1.0), dict(params=biases, lr_mult=cfg.bias_lr_mult)]
    cls = CaffeSGD if cfg.name == "caffe_sgd" else torch.optim.SGD
    decay = cfg.weight_decay if weight_decay is None else weight_decay
    return cls(groups, lr=base_lr, momentum=cfg.momentum, weight_decay=decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["weight_decay"] = weight_decay
