"""The surgeon: applies the DNS rules of `dns.thresholds` to the masked layers of a model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from dns.masks import Mask, attach_masks
from dns.models import layer_kind, prunable_layers
from dns.thresholds import gate_open, magnitude_stats, thresholds

# what a checkpoint keeps of each layer's surgery, beside its weights and masks
LAYER_SETTINGS = ("c", "iter_stop", "mu", "sigma", "a", "b", "pruned", "spliced")


@dataclass
class Phase:
    """A span of surgery iterations [first, first + iters) that operates on `c`'s layers alone."""

    first: int
    iters: int
    c: dict[str, float]  # layer name -> c, for the layers of this phase
    iter_stop: dict[str, int]  # layer name -> iteration of the phase from which its mask is frozen
    gamma: float
    power: float

    @property
    def label(self) -> str:
        return ",".join(self.c)


def select_layers(selection: str | list[str], kinds: dict[str, str]) -> list[str]:
    """Names of the layers picked by `selection`: 'all', 'conv', 'fc', or a list of those and layer names.

    `kinds` maps each layer name to 'conv' or 'fc', in forward order; the result keeps that order.
    A name that matches no layer is an error, never silently ignored.
    """
    items = [selection] if isinstance(selection, str) else list(selection)
    picked: set[str] = set()
    for item in items:
        if item == "all":
            picked.update(kinds)
        elif item in ("conv", "fc"):
            picked.update(name for name, kind in kinds.items() if kind == item)
        elif item in kinds:
            picked.add(item)
        else:
            raise ValueError(f"no layer named {item!r}; layers are {', '.join(kinds)} (or all, conv, fc)")
    return [name for name in kinds if name in picked]


@dataclass
class LayerState:
    """One prunable layer: its live masks, its settings, thresholds and counts of mask changes."""

    name: str
    kind: str
    params: dict[str, nn.Parameter]  # 'weight' / 'bias' -> the trainable parameter, holding the dense W
    masks: dict[str, torch.Tensor]  # the same keys -> live mask buffer T (absent when not masked)
    handles: dict[str, Mask]  # the same keys -> the Mask that applies T and re-decides it
    c: float | None = None  # None: not under surgery, its masks stay as they are
    iter_stop: int = 0
    mu: float | None = None
    sigma: float | None = None
    a: float | None = None
    b: float | None = None
    pruned: int = 0  # connections cut, counted over all mask updates
    spliced: int = 0  # connections restored

    @property
    def under_surgery(self) -> bool:
        return self.c is not None

    def param_count(self, which: tuple[str, ...] = ("weight", "bias")) -> int:
        return sum(p.numel() for key, p in self.params.items() if key in which)

    def remaining(self, which: tuple[str, ...] = ("weight", "bias")) -> int:
        """Connections whose mask is 1 (an unmasked parameter counts in full)."""
        total = 0
        for key, p in self.params.items():
            if key in which:
                total += int(self.masks[key].count_nonzero()) if key in self.masks else p.numel()
        return total


class GateDraws:
    """The stream of uniform draws that decide whether a layer's gate opens, fetched BLOCK at a time.

    One torch call per 1,024 draws rather than one per iteration (14 µs of a gated LeNet-300 step of 1.3 ms).
    torch draws a float32 stream one value after another, so the values are those of one call per draw.
    """

    BLOCK = 1024

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self._start = self.generator.get_state()  # the generator's state before the current block
        self._block: list[float] = []
        self._used = 0

    def _next_block(self) -> None:
        self._start = self.generator.get_state()
        self._block, self._used = torch.rand(self.BLOCK, generator=self.generator).tolist(), 0

    def take(self, n: int) -> list[float]:
        """The next `n` draws."""
        draws = []
        for _ in range(n):
            if self._used == len(self._block):
                self._next_block()
            draws.append(self._block[self._used])
            self._used += 1
        return draws

    def state_dict(self) -> dict:
        return {"generator": self._start, "used": self._used}

    def load_state_dict(self, state: dict | torch.Tensor) -> None:
        if isinstance(state, torch.Tensor):  # checkpoints before 2026-12-03 kept the generator's state alone
            state = {"generator": state, "used": 0}
        self.generator.set_state(state["generator"])
        self._start, self._block, self._used = state["generator"], [], 0
        if state["used"]:  # draw the block again and skip what was used of it
            self._next_block()
            self._used = state["used"]


@dataclass
class Surgeon:
    """Masks every conv and fc layer of a model and re-decides the masks of the selected ones.

    Args:
        model: the network; its conv/fc weights (and biases if `prune_bias`) get masks.
        c: per-layer c for the layers under surgery (name -> c); other layers keep their masks.
        iter_stop: per-layer iteration from which that layer's mask is frozen.
        margin, gamma, power: the hysteresis margin t and the sigma(i) schedule.
        seed: seeds the gates' draws, one uniform draw per layer per iteration.
        min_remaining: per layer (name -> fraction), the fraction of its weights that always stays (the
            largest |w|), so that the layer is never cut off entirely; 0 or absent leaves the rule alone.
        initial_masks: masks to start from ('fc1.weight' -> tensor), e.g. from a checkpoint.
    """

    model: nn.Module
    c: dict[str, float]
    iter_stop: dict[str, int]
    margin: float = 0.1
    gamma: float = 1e-4
    power: float = 1.0
    prune_bias: bool = True
    seed: int = 0
    min_remaining: dict[str, float] = field(default_factory=dict)
    initial_masks: dict[str, torch.Tensor] | None = None
    layers: list[LayerState] = field(init=False)
    active: set[str] = field(init=False)  # the layers whose masks `step` re-decides (the current phase's)

    def __post_init__(self):
        modules = prunable_layers(self.model)
        live = attach_masks(modules, self.prune_bias, self.initial_masks)
        self.layers = []
        for name, module in modules.items():
            params = {key: getattr(module, key) for key in ("weight", "bias") if getattr(module, key) is not None}
            masks = live.get(name, {})
            self.layers.append(LayerState(name, layer_kind(module), params, masks,
                                          {key: module.dns_masks[key] for key in masks},
                                          c=self.c.get(name), iter_stop=self.iter_stop.get(name, 0)))
        self.draws = GateDraws(self.seed)
        self.active = {layer.name for layer in self.layers if layer.under_surgery}

    def begin_phase(self, c: dict[str, float], iter_stop: dict[str, int], gamma: float, power: float) -> None:
        """Operate from now on on the layers in `c` alone, with new settings and thresholds fixed now;
        the other layers keep their masks (and what they had in a previous phase)."""
        for layer in self.layers:
            if layer.name in c:
                layer.c, layer.iter_stop = c[layer.name], iter_stop[layer.name]
        self.active, self.gamma, self.power = set(c), gamma, power
        self.start()

    def start(self) -> None:
        """Fix each active layer's statistics and thresholds, once, from its current non-zero weights."""
        for layer in self.layers:
            if layer.name in self.active:
                effective = [p.detach() * layer.masks[k] if k in layer.masks else p.detach()
                             for k, p in layer.params.items()]
                layer.mu, layer.sigma = magnitude_stats(effective)
                layer.a, layer.b = thresholds(layer.mu, layer.sigma, layer.c, self.margin)

    def layer_settings(self) -> dict[str, dict]:
        """{layer name: {c, iter_stop, mu, sigma, a, b, pruned, spliced}}, for checkpoints."""
        return {layer.name: {key: getattr(layer, key) for key in LAYER_SETTINGS} for layer in self.layers}

    def load_layer_settings(self, settings: dict[str, dict]) -> None:
        """Restore what `layer_settings` returned (keys it lacks are left as they are)."""
        for layer in self.layers:
            for key, value in settings.get(layer.name, {}).items():
                if key in LAYER_SETTINGS:
                    setattr(layer, key, value)

    def step(self, iteration: int) -> int:  # no torch.no_grad needed: masks are buffers, weights only read
        """Surgery at `iteration`: each layer draws r and, if its gate opens, updates its masks.

        Returns how many layers updated their masks.
        """
        active = [layer for layer in self.layers if layer.name in self.active]
        updated = 0
        for layer, draw in zip(active, self.draws.take(len(active))):
            if not gate_open(iteration, draw, self.gamma, self.power, layer.iter_stop):
                continue
            for key, mask in layer.masks.items():
                pruned, spliced = layer.handles[key].update(layer.a, layer.b)
                keep = self.min_remaining.get(layer.name, 0.0)
                if key == "weight" and keep > 0:
                    spliced += keep_largest_(layer.params[key], mask, math.ceil(keep * mask.numel()))
                layer.pruned += pruned
                layer.spliced += spliced
            updated += 1
        return updated


def keep_largest_(weight: torch.Tensor, mask: torch.Tensor, count: int) -> int:
    """If fewer than `count` entries of `mask` are 1, set it to 1 at the `count` largest |w|; returns how many it added."""
    kept = int(mask.sum())
    if kept >= count:
        return 0
    largest = weight.detach().abs().flatten().topk(count).indices
    mask.view(-1)[largest] = 1.0
    return int(mask.sum()) - kept
