"""The baselines DNS is measured against, on the same masks, reports and checkpoints as `dns.Surgeon`.

- `Han`: Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks": rounds of
  pruning each layer's weights at or below quality × std of its weights, each followed by retraining.
- `GradualMagnitude`: Zhu & Gupta 2017, "To prune, or not to prune": every Δt iterations each layer (or the
  network, `global_sparsity`) is pruned to the sparsity s_t of a cubic schedule, by weight magnitude.

Unlike DNS, both hold the pruned weights at zero: their masks are hard (the dense W gets the gradient of
W ⊙ T, zero where T is 0), a pruned weight is set to 0 with its optimizer state, and no mask returns to 1.
The math is in the pure functions; the classes decide which layer prunes when. A layer's `c` holds its quality or
final sparsity, `mu` and `sigma` the mean and std of its signed weights (not of |w| as for DNS), `a` = `b` the
magnitude it was last pruned at. As in DNS, a layer's weight and
bias are pruned together (one magnitude ranking, one std), unless prune_bias=False.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dns import masks as masking
from dns.surgeon import LayerState, Surgeon, _check


def weight_std(tensors: list[torch.Tensor]) -> tuple[float, float]:
    """Mean and population std of the non-zero entries of `tensors` together (the weights, not |w|)."""
    values = torch.cat([t.detach().flatten() for t in tensors]).double()
    values = values[values != 0]
    if values.numel() == 0:
        return 0.0, 0.0
    mean = values.mean()
    return mean.item(), (values.square().mean() - mean.square()).clamp_min(0).sqrt().item()


def han_threshold(std: float, quality: float, round_: int, rounds: int) -> float:
    """The pruning threshold of round `round_` (1..rounds): quality × std, reached in equal steps over the rounds
    (round r prunes at r/rounds of it), so that each round prunes more, as in Han et al.'s iterative pruning."""
    return quality * std * round_ / rounds


def quality_for_density(tensors: list[torch.Tensor], density: float) -> float:
    """The quality at which Han's last round would keep `density` of these (dense) weights as they are now: the
    magnitude above which that fraction lies, over their std. Retraining moves the weights, so it is an aim."""
    _, std = weight_std(tensors)
    return max(magnitude_threshold(tensors, 1.0 - density), 0.0) / std if std > 0 else 0.0


def gmp_sparsity(t: int, initial: float, final: float, start: int, steps: int, every: int) -> float:
    """Zhu & Gupta's s_t = s_f + (s_i − s_f)(1 − (t − t0)/(n·Δt))³, with t held within [t0, t0 + n·Δt]."""
    if steps == 0:
        return final
    progress = min(max((t - start) / (steps * every), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def magnitude_threshold(tensors: list[torch.Tensor], sparsity: float) -> float:
    """The magnitude at or below which round(sparsity × size) entries of `tensors` lie (−1: prune none)."""
    magnitudes = torch.cat([t.detach().abs().flatten() for t in tensors])
    count = round(sparsity * magnitudes.numel())
    return -1.0 if count == 0 else magnitudes.kthvalue(count).values.item()


class _HardMasks(Surgeon):
    """What both baselines share: hard masks, pruning at a magnitude threshold, the pruned held at zero."""

    straight_through = False

    def __init__(self, model: nn.Module, setting: float, per_layer: dict[str, float] | None, *, layers, exclude,
                 prune_bias: bool, masks: dict[str, torch.Tensor] | None):
        name = type(self).setting.replace(" ", "_")
        for key, value in [(name, setting), *((f"{name}_per_layer[{k!r}]", v) for k, v in (per_layer or {}).items())]:
            _check(key, value, 0.0)
        super().__init__(model, c=setting, c_per_layer=per_layer, layers=layers, exclude=exclude, gamma=0.0,
                         power=0.0, prune_bias=prune_bias, masks=masks)

    def start(self) -> None:
        """The active layers' statistics, fixed now from their weights; a layer's pruned weights are set to 0."""
        for layer in self.layers:
            if layer.name in self.active:
                masking.hold_pruned_at_zero_(layer.module)
                layer.mu, layer.sigma = weight_std([layer.mask(k) * layer.params[k].detach() for k in layer.keys])

    def thresholds_at(self, iteration: int, active: list[LayerState]) -> dict[str, float] | None:
        """Layer name -> the magnitude to prune at, at `iteration`; None where the method does not prune."""
        raise NotImplementedError

    def step(self, iteration: int | None = None, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Prune at `iteration` (default: the pruner's own count, one more each call) if the method prunes then;
        `optimizer`'s state is cleared where weights are pruned. Returns how many layers pruned."""
        self._check_not_removed()
        if iteration is None:
            iteration = self.iteration
        self.iteration = iteration + 1
        active = [layer for layer in self.layers if layer.name in self.active]
        thresholds = self.thresholds_at(iteration, active)
        for layer in active if thresholds is not None else []:
            self.prune(layer, thresholds[layer.name], optimizer)
        return len(active) if thresholds is not None else 0

    def prune(self, layer: LayerState, threshold: float, optimizer: torch.optim.Optimizer | None) -> None:
        """Prune the entries of `layer` at or below `threshold` in magnitude, and hold them at zero."""
        for key in layer.keys:
            pruned, _ = masking.update_mask_(masking.dense(layer.module, key), layer.mask(key), threshold, math.inf)
            layer.pruned += pruned
        masking.hold_pruned_at_zero_(layer.module, optimizer)
        layer.a = layer.b = threshold

    def effective(self, layer: LayerState) -> list[torch.Tensor]:
        return [masking.dense(layer.module, k) * layer.mask(k) for k in layer.keys]


class Han(_HardMasks):
    """Han et al.'s prune and retrain: `rounds` rounds of `round_iters` iterations; each round's first step
    prunes every active layer at or below `han_threshold` (quality × the std of its weights when pruning
    started, in equal steps over the rounds), and the rest of the round retrains with the pruned weights at zero.

        pruner = dns.Han(model, quality=2.0, rounds=3, round_iters=4000)
        for i, (images, labels) in enumerate(loader):
            pruner.step(i, optimizer)   # before the forward; prunes at iterations 0, 4000, 8000
            ...

    quality_per_layer ({'fc1': 2.5, 'conv*': 1.0}), layers, exclude, prune_bias and masks as in `dns.Surgeon`.
    """

    setting = "quality"  # (dns.report.SETTING)

    def __init__(self, model: nn.Module, quality: float = 1.0, *, quality_per_layer: dict[str, float] | None = None,
                 rounds: int = 3, round_iters: int = 4000, layers: str | list[str] = "all",
                 exclude: str | list[str] = (), prune_bias: bool = True,
                 masks: dict[str, torch.Tensor] | None = None):
        for key, value in (("rounds", rounds), ("round_iters", round_iters)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}={value!r}: must be an int >= 1")
        self.rounds, self.round_iters = rounds, round_iters
        super().__init__(model, quality, quality_per_layer, layers=layers, exclude=exclude, prune_bias=prune_bias,
                         masks=masks)

    def thresholds_at(self, iteration: int, active: list[LayerState]) -> dict[str, float] | None:
        round_, offset = divmod(iteration, self.round_iters)
        if offset or round_ >= self.rounds:
            return None  # retraining
        return {layer.name: han_threshold(layer.sigma, layer.c, round_ + 1, self.rounds) for layer in active}


class GradualMagnitude(_HardMasks):
    """Gradual magnitude pruning (Zhu & Gupta 2017): at iterations start, start + every, ..., end each active
    layer is pruned to the sparsity `gmp_sparsity` (from `initial_sparsity` to its final one, cubic), the
    smallest magnitudes first; with `global_sparsity` one threshold over all active layers together.

    final_sparsity is every layer's target (a fraction of its weights, and biases with prune_bias);
    final_sparsity_per_layer overrides it. layers, exclude, prune_bias and masks as in `dns.Surgeon`.
    """

    setting = "final sparsity"

    def __init__(self, model: nn.Module, final_sparsity: float = 0.9, *,
                 final_sparsity_per_layer: dict[str, float] | None = None, initial_sparsity: float = 0.0,
                 start: int = 0, end: int, every: int = 100, global_sparsity: bool = False,
                 layers: str | list[str] = "all", exclude: str | list[str] = (), prune_bias: bool = True,
                 masks: dict[str, torch.Tensor] | None = None):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r}: must be an int >= 1")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end and (end - start) % every == 0):
            raise ValueError(f"start={start!r}, end={end!r}: need 0 <= start <= end, end - start a multiple of "
                             f"every={every}")
        if global_sparsity and final_sparsity_per_layer:
            raise ValueError("global_sparsity prunes all layers to one sparsity: drop final_sparsity_per_layer")
        for key, value in [("initial_sparsity", initial_sparsity), ("final_sparsity", final_sparsity),
                           *((f"final_sparsity_per_layer[{k!r}]", v) for k, v in (final_sparsity_per_layer or {}).items())]:
            if not isinstance(value, (int, float)) or not 0 <= value < 1 or value < initial_sparsity:
                raise ValueError(f"{key}={value!r}: must lie in [initial_sparsity, 1) = [{initial_sparsity}, 1)")
        self.initial, self.start_iteration, self.every = initial_sparsity, start, every
        self.steps, self.global_sparsity, self.final = (end - start) // every, global_sparsity, final_sparsity
        super().__init__(model, final_sparsity, final_sparsity_per_layer, layers=layers, exclude=exclude,
                         prune_bias=prune_bias, masks=masks)

    def sparsity(self, iteration: int, final: float) -> float:
        return gmp_sparsity(iteration, self.initial, final, self.start_iteration, self.steps, self.every)

    def thresholds_at(self, iteration: int, active: list[LayerState]) -> dict[str, float] | None:
        done = iteration - self.start_iteration
        if done < 0 or done % self.every or done // self.every > self.steps:
            return None  # between pruning steps
        if self.global_sparsity:
            threshold = magnitude_threshold([t for layer in active for t in self.effective(layer)],
                                            self.sparsity(iteration, self.final))
            return dict.fromkeys((layer.name for layer in active), threshold)
        return {layer.name: magnitude_threshold(self.effective(layer), self.sparsity(iteration, layer.c))
                for layer in active}
