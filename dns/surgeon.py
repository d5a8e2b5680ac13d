"""The surgeon: Dynamic Network Surgery over any model, in the spirit of `torch.ao.pruning`.

    surgeon = dns.Surgeon(model, c=1.0)   # masks on every conv and fc layer, thresholds from the weights now
    ...                                   # the training loop, calling surgeon.step() once per iteration
    print(surgeon.markdown())             # the per-layer table
    surgeon.remove()                      # W ⊙ T baked into plain weights: an ordinary model

The masks are `dns.masks`, the math is `dns.thresholds`; this module decides which layer
updates its mask when, and keeps what a checkpoint needs to go on exactly (`state_dict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from dns import masks as masking
from dns.layers import per_layer, select_layers
from dns.models import layer_kind, prunable_layers
from dns.report import dense_rows, layer_rows, layer_table, totals
from dns.thresholds import gate_open, magnitude_stats, thresholds

if TYPE_CHECKING:  # (dns.config imports this module's functions when it validates)
    from dns.config import RunConfig

# what a checkpoint keeps of each layer's surgery, beside its weights and masks
LAYER_SETTINGS = ("c", "iter_stop", "mu", "sigma", "a", "b", "pruned", "spliced")


# the setting of a baseline's method config (dns.config) that takes the place of DNS's c, per layer as c_per_layer
BASELINE_SETTINGS = {"han": "quality", "gmp": "final_sparsity"}


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


def surgery_phases(cfg: "RunConfig", kinds: dict[str, str]) -> list[Phase]:
    """The surgery stage as phases: surgery.phases in order, or one phase of the surgery's own settings (for a
    baseline method, one phase whose `c` holds each layer's quality or final sparsity).

    In a phase the most specific setting wins: its c_per_layer, its c, then surgery.c_per_layer and surgery.c
    (keys of the *_per_layer maps may be glob patterns; `dns.layers.per_layer`). surgery.exclude holds in every
    phase. A phase's iter_stop counts from its start (unset: the phase's end).
    """
    s, names, method = cfg.surgery, list(kinds), cfg.method

    def chosen_layers(selection, iters: int, key: str) -> list[str]:
        chosen = select_layers(selection, kinds, s.exclude, key)
        if iters > 0 and not chosen:
            raise ValueError(f"{key} minus surgery.exclude leaves no layer to operate on: select some")
        return chosen

    if method.name in BASELINE_SETTINGS:  # one phase, each layer with its quality or final sparsity in place of c
        setting = BASELINE_SETTINGS[method.name]
        values = per_layer(f"method.{setting}_per_layer", getattr(method, f"{setting}_per_layer"), names)
        chosen = chosen_layers(s.layers, s.iters, "surgery.layers")
        return [Phase(0, s.iters, {n: values.get(n, getattr(method, setting)) for n in chosen},
                      dict.fromkeys(chosen), 0.0, 0.0)]
    c_per_layer = per_layer("surgery.c_per_layer", s.c_per_layer, names)
    stops = per_layer("surgery.iter_stop_per_layer", s.iter_stop_per_layer, names)

    if not s.phases:
        chosen = chosen_layers(s.layers, s.iters, "surgery.layers")
        stop = s.iters if s.iter_stop is None else s.iter_stop
        return [Phase(0, s.iters, {n: c_per_layer.get(n, s.c) for n in chosen},
                      {n: stops.get(n, stop) for n in chosen}, s.gamma, s.power)]
    phases, first = [], 0
    for i, step in enumerate(s.phases):
        chosen = chosen_layers(step.layers, step.iters, f"surgery.phases[{i}].layers")
        own = per_layer(f"surgery.phases[{i}].c_per_layer", step.c_per_layer, names)
        c = {n: own.get(n, c_per_layer.get(n, s.c) if step.c is None else step.c) for n in chosen}
        stop = step.iters if step.iter_stop is None else step.iter_stop
        phases.append(Phase(first, step.iters, c, dict.fromkeys(chosen, stop),
                            s.gamma if step.gamma is None else step.gamma,
                            s.power if step.power is None else step.power))
        first += step.iters
    return phases


@dataclass
class LayerState:
    """One prunable layer: its settings, thresholds and counts of mask changes; its tensors are looked up
    live on the module, so `model.to()`, `.double()` and `load_state_dict` reach them."""

    name: str
    module: nn.Module
    c: float | None = None  # None: not under surgery, its masks stay as they are
    iter_stop: int | None = 0  # the mask is frozen from this iteration on (None: never)
    mu: float | None = None
    sigma: float | None = None
    a: float | None = None
    b: float | None = None
    pruned: int = 0  # connections cut, counted over all mask updates
    spliced: int = 0  # connections restored

    @property
    def kind(self) -> str:
        return layer_kind(self.module)

    @property
    def keys(self) -> tuple[str, ...]:
        """Its masked parameters: ('weight', 'bias') or ('weight',)."""
        return masking.masked_names(self.module)

    @property
    def under_surgery(self) -> bool:
        return self.c is not None

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """'weight' / 'bias' -> the trainable dense tensor (W, not W ⊙ T)."""
        return {key: masking.dense(self.module, key) for key in ("weight", "bias")
                if masking.is_masked(self.module, key) or self.module._parameters.get(key) is not None}

    def mask(self, key: str) -> torch.Tensor:
        """The live 0/1 mask of `key`."""
        return masking.mask_of(self.module, key)

    def param_count(self, which: tuple[str, ...] = ("weight", "bias")) -> int:
        return sum(p.numel() for key, p in self.params.items() if key in which)

    def remaining(self, which: tuple[str, ...] = ("weight", "bias")) -> int:
        """Connections whose mask is 1 (an unmasked parameter counts in full)."""
        return sum(int(self.mask(key).count_nonzero()) if key in self.keys else p.numel()
                   for key, p in self.params.items() if key in which)


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


def _check(name: str, value, low: float = -math.inf, high: float = math.inf, high_open: bool = False) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < low or value > high \
            or (high_open and value == high):
        bound = (f" in [{low}, {high}{')' if high_open else ']'}" if math.isfinite(high)
                 else f" >= {low}" if math.isfinite(low) else "")
        raise ValueError(f"{name}={value!r}: must be a finite number{bound}")


class Surgeon:
    """Dynamic Network Surgery on `model`: masks on the weight (and bias) of every Conv2d and Linear layer,
    and the σ-gated surgery that re-decides the masks of the selected layers, one `step()` per iteration.

    The thresholds of each selected layer are fixed now from its current weights (train the model dense
    first): thr = max(μ + c·σ, 0) over |w| of its non-zero weights and biases, a = (1 − margin)·thr,
    b = (1 + margin)·thr. At iteration i a layer updates its mask with probability σ(i) = (1 + γ·i)^−power,
    while i < iter_stop: |w| <= a is pruned, |w| > b is spliced back.

    Args:
        model: any `nn.Module`; its Conv2d and Linear layers are masked (under their `named_modules` names).
        c: c of every selected layer; `c_per_layer` ({'fc1': 4.0, 'layer3.*': 2.0}) overrides it layer by
            layer (keys are names or glob patterns; the most specific key that matches a layer wins; so for
            every `*_per_layer` argument).
        layers: the layers under surgery: 'all', 'conv', 'fc', or a list of those, layer names and glob
            patterns ('layer3.*'); the other layers keep their masks (all ones unless `masks` says otherwise).
        exclude: layers never under surgery, given the same way (e.g. ['conv1', 'fc']: conv1 and every fc layer,
            'fc' being the kind; in a ResNet that is the stem and the classifier).
        iter_stop: masks frozen from this iteration on (None: never); `iter_stop_per_layer` overrides it.
        margin, gamma, power: the hysteresis margin and the σ(i) schedule.
        prune_bias: mask the biases too, as the authors did.
        splice: False removes the splicing half of the surgery function (masks only go from 1 to 0): the
            paper's ablation, DNS without splicing.
        min_remaining: the fraction of each layer's weights that always stays (its largest |w|), so that no
            layer is cut off; `min_remaining_per_layer` overrides it.
        seed: seeds the gates' draws (one uniform draw per selected layer per step), apart from torch's.
        masks: masks to start from ('fc1.weight' -> tensor), e.g. an imported pruned model's.
    """

    straight_through = True  # pruned weights keep their gradient (dns.masks); the baselines' masks are hard
    setting = "c"  # what a layer's `c` holds: the name of its column in the reports

    def __init__(self, model: nn.Module, c: float = 1.0, *, c_per_layer: dict[str, float] | None = None,
                 layers: str | list[str] = "all", exclude: str | list[str] = (), iter_stop: int | None = None,
                 iter_stop_per_layer: dict[str, int] | None = None, margin: float = 0.1, gamma: float = 1e-4,
                 power: float = 1.0, prune_bias: bool = True, splice: bool = True, min_remaining: float = 0.0,
                 min_remaining_per_layer: dict[str, float] | None = None, seed: int = 0,
                 masks: dict[str, torch.Tensor] | None = None):
        modules = prunable_layers(model)
        if not modules:
            raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
        names = list(modules)
        selected = select_layers(layers, {name: layer_kind(m) for name, m in modules.items()}, exclude)
        c_per_layer = per_layer("c_per_layer", c_per_layer, names)
        stops = per_layer("iter_stop_per_layer", iter_stop_per_layer, names)
        keep = per_layer("min_remaining_per_layer", min_remaining_per_layer, names)
        for key, value in [("c", c), *((f"c_per_layer[{k!r}]", v) for k, v in c_per_layer.items())]:
            _check(key, value)
        for key, value in [("iter_stop", iter_stop), *((f"iter_stop_per_layer[{k!r}]", v) for k, v in stops.items())]:
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{key}={value!r}: must be an iteration (an int >= 0) or None")
        for key, value in [("min_remaining", min_remaining),
                           *((f"min_remaining_per_layer[{k!r}]", v) for k, v in keep.items())]:
            _check(key, value, 0.0, 1.0)
        _check("margin", margin, 0.0, 1.0, high_open=True)
        _check("gamma", gamma, 0.0)
        _check("power", power, 0.0)
        if not splice and (min_remaining > 0 or any(v > 0 for v in keep.values())):
            raise ValueError("splice=False never sets a mask back to 1, but min_remaining keeps the largest weights by "
                             "splicing them back: drop one of them")

        masking.attach_masks(model, modules, prune_bias, masks, self.straight_through)
        self.model, self.margin, self.seed, self.splice = model, margin, seed, splice
        self.min_remaining = {name: keep.get(name, min_remaining) for name in names}
        self.layers = [LayerState(name, module) for name, module in modules.items()]
        self.draws = GateDraws(seed)
        self.removed = False
        self.begin_phase({name: c_per_layer.get(name, c) for name in selected},
                         {name: stops.get(name, iter_stop) for name in selected}, gamma, power)

    def begin_phase(self, c: dict[str, float], iter_stop: dict[str, int | None], gamma: float, power: float) -> None:
        """Operate from now on on the layers in `c` alone (layer name -> c, iter_stop), with the gate's
        iterations counted from 0 again and thresholds fixed now from their weights; the other layers keep
        their masks (and what they had in a previous phase)."""
        for layer in self.layers:
            if layer.name in c:
                layer.c, layer.iter_stop = c[layer.name], iter_stop[layer.name]
        self.active, self.gamma, self.power = set(c), gamma, power
        self.iteration = 0
        self.start()

    def start(self) -> None:
        """Fix each active layer's statistics and thresholds, once, from its current non-zero weights (W ⊙ T)."""
        for layer in self.layers:
            if layer.name in self.active:
                effective = [p.detach() * layer.mask(k) if k in layer.keys else p.detach()
                             for k, p in layer.params.items()]
                layer.mu, layer.sigma = magnitude_stats(effective)
                layer.a, layer.b = thresholds(layer.mu, layer.sigma, layer.c, self.margin)

    def step(self, iteration: int | None = None, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Surgery at `iteration` (default: the surgeon's own count, one more each call): each active layer
        draws r and, if its gate opens, updates its masks. Returns how many layers updated their masks.
        (`optimizer` is for the baselines' hard masks, whose pruned weights it holds at zero; DNS needs none.)"""
        self._check_not_removed()
        if iteration is None:
            iteration = self.iteration
        self.iteration = iteration + 1
        active = [layer for layer in self.layers if layer.name in self.active]
        updated = 0
        for layer, draw in zip(active, self.draws.take(len(active))):
            if not gate_open(iteration, draw, self.gamma, self.power, layer.iter_stop):
                continue
            for key in layer.keys:
                weight, mask = masking.dense(layer.module, key), masking.mask_of(layer.module, key)
                pruned, spliced = masking.update_mask_(weight, mask, layer.a, layer.b if self.splice else math.inf)
                keep = self.min_remaining[layer.name]
                if key == "weight" and keep > 0:
                    spliced += keep_largest_(weight, mask, math.ceil(keep * weight.numel()))
                layer.pruned += pruned
                layer.spliced += spliced
            updated += 1
        return updated

    # -- checkpoints ---------------------------------------------------------------------------------
    def layer_settings(self) -> dict[str, dict]:
        """{layer name: {c, iter_stop, mu, sigma, a, b, pruned, spliced}}, for checkpoints."""
        return {layer.name: {key: getattr(layer, key) for key in LAYER_SETTINGS} for layer in self.layers}

    def load_layer_settings(self, settings: dict[str, dict]) -> None:
        """Restore what `layer_settings` returned (keys it lacks are left as they are)."""
        for layer in self.layers:
            for key, value in settings.get(layer.name, {}).items():
                if key in LAYER_SETTINGS:
                    setattr(layer, key, value)

    def state_dict(self) -> dict:
        """Everything surgery goes on from: masks, per-layer thresholds and counts, the active layers and
        their gate schedule, the iteration count and the gate's random state (the weights are the model's)."""
        self._check_not_removed()
        return {"masks": masking.mask_state_dict(self.model), "layers": self.layer_settings(),
                "active": sorted(self.active), "gamma": self.gamma, "power": self.power,
                "iteration": self.iteration, "gate": self.draws.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Take up what `state_dict` returned: surgery then goes on exactly as if it had never stopped."""
        self._check_not_removed()
        masking.load_masks(self.model, state["masks"])
        self.load_layer_settings(state["layers"])
        self.active, self.gamma, self.power = set(state["active"]), state["gamma"], state["power"]
        self.iteration = state["iteration"]
        self.draws.load_state_dict(state["gate"])

    # -- reports and the end of surgery -------------------------------------------------------------
    def table(self) -> list[dict]:
        """One row per layer: name, kind, shape, params, remaining, remaining_pct, c, mu, sigma, a, b,
        pruned, spliced, ... (report.json's `layers`)."""
        self._check_not_removed()
        return layer_rows(self)

    def dense_table(self) -> list[dict]:
        """One row per module with parameters that is not masked (BatchNorm, ...): name, kind, params, remaining."""
        self._check_not_removed()
        return dense_rows(self)

    def totals(self) -> dict:
        """params, remaining and compression over every masked layer, with and without biases, and over all
        the model's parameters (model_params, model_remaining, model_compression)."""
        return totals(self.table(), self.dense_table())

    def markdown(self) -> str:
        """The per-layer table in the form of the paper's Tables 2-3, as in report.md, and the compression."""
        return layer_table(self.table(), self.dense_table(), self.setting)

    def remove(self) -> nn.Module:
        """End surgery: W ⊙ T baked into the plain weights, masks gone; returns the model, now an ordinary one
        (same Parameter objects, so its optimizer stays valid; `dns.save` writes it compactly). Training on
        afterwards lets pruned weights grow back: freeze the masks (iter_stop) for fine-tuning, remove() last."""
        self.removed = True
        return masking.remove_masks(self.model)

    def _check_not_removed(self) -> None:
        if self.removed:
            raise RuntimeError("this Surgeon's masks were removed (remove()): its model is an ordinary one now")


def keep_largest_(weight: torch.Tensor, mask: torch.Tensor, count: int) -> int:
    """If fewer than `count` entries of `mask` are 1, set it to 1 at the `count` largest |w|; returns how many it added."""
    kept = int(mask.sum())
    if kept >= count:
        return 0
    largest = weight.detach().abs().flatten().topk(count).indices
    mask.view(-1)[largest] = 1.0
    return int(mask.sum()) - kept
