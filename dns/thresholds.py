"""The math of Dynamic Network Surgery as pure functions on tensors and numbers.

Guo, Yao & Chen, "Dynamic Network Surgery for Efficient DNNs" (NIPS 2016), as implemented in the
authors' Caffe layers (compress_conv_layer.cpp, compress_inner_product_layer.cpp):

    h_k(w) = 0      if |w| <= a_k          (prune)
             T      if a_k < |w| <= b_k    (keep the current mask: hysteresis)
             1      if b_k <  |w|          (keep, or splice back)

with a_k = (1 - t)·thr_k, b_k = (1 + t)·thr_k and thr_k = max(mu_k + c_k·sigma_k, 0), where mu_k and
sigma_k are the mean and population standard deviation of |w| over the layer's non-zero weights and
biases, computed once when surgery starts. A layer re-decides its mask at iteration i with
probability sigma(i) = (1 + gamma·i)^(-power), and never from iter_stop on.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


def magnitude_stats(tensors: Iterable[torch.Tensor]) -> tuple[float, float]:
    """Mean and population std of |w| over the non-zero entries of all `tensors` together.

    Zeros are left out, as the authors' code does, so a layer that starts already sparse (an
    imported pruned model) gets the statistics of its surviving weights.
    """
    magnitudes = torch.cat([t.detach().abs().flatten() for t in tensors]).double()
    magnitudes = magnitudes[magnitudes != 0]
    if magnitudes.numel() == 0:
        return 0.0, 0.0
    mu = magnitudes.mean()
    # sqrt(E[w^2] - mu^2), the population formula of the Caffe code; clamp guards rounding below 0.
    sigma = (magnitudes.square().mean() - mu.square()).clamp_min(0).sqrt()
    return mu.item(), sigma.item()


def thresholds(mu: float, sigma: float, c: float, margin: float) -> tuple[float, float]:
    """The prune threshold a and the splice threshold b of one layer (a <= b)."""
    thr = max(mu + c * sigma, 0.0)
    return (1.0 - margin) * thr, (1.0 + margin) * thr


def update_mask(weight: torch.Tensor, mask: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """The surgery function h applied elementwise: a new mask, same shape and dtype as `mask`."""
    magnitude = weight.abs()
    keep = torch.where(magnitude <= a, False, mask.bool())  # prune at or below a
    keep = keep | (magnitude > b)  # splice above b
    return keep.to(mask.dtype)


def surgery_probability(iteration: int, gamma: float, power: float) -> float:
    """sigma(i) = (1 + gamma·i)^(-power): how likely a layer is to update its mask at iteration i."""
    return math.pow(1.0 + gamma * iteration, -power)


def gate_open(iteration: int, draw: float, gamma: float, power: float, iter_stop: int | None) -> bool:
    """Whether a layer whose uniform draw is `draw` updates its mask at `iteration` (iter_stop None: never frozen)."""
    return (iter_stop is None or iteration < iter_stop) and surgery_probability(iteration, gamma, power) > draw
