"""Binary masks on parameters, with the straight-through gradient of DNS.

A masked parameter takes `torch.nn.utils.prune`'s layout: the dense W is the trainable `module.<name>_orig` (the
optimizer updates it, pruned entries included) and the 0/1 mask T the buffer `module.<name>_mask`. Reading
`module.<name>` computes W ⊙ T afresh, inside the autograd graph, as `torch.nn.utils.parametrize` does: the
module's class is swapped for a subclass with a property of that name (`masked_class`), whose value comes from
`StraightThrough`: its forward is exactly W * T, its backward hands W the gradient of W ⊙ T unchanged, so pruned
weights keep learning and can be spliced back.

Because W ⊙ T is an ordinary tensor of the graph of the forward that made it, nothing has to be put back
afterwards: two forwards before their backwards, a kept graph, a forward with no backward, an exception, a
mask changed between two forwards, autocast, `torch.compile`, `model.double()` all see what they would see
in a dense model whose weight is W ⊙ T. A tensor shared by two modules is refused: its mask would be ambiguous.
(`parametrize` itself gives the same semantics, but its property and module calls cost a LeNet-300-100 step
about 10 % more than this one property; BENCHMARKS.md.)
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from dns import kernels
from dns.thresholds import update_mask


class StraightThrough(torch.autograd.Function):
    """W ⊙ T forward, the identity backward to W (T gets no gradient): the straight-through rule of DNS."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # (the combined forward: a separate setup_context costs 40 µs a call on fc1 of LeNet-300-100)
        return weight * mask  # nothing saved: a mask changed after this forward cannot reach its backward

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _masked_property(name: str, straight_through: bool) -> property:
    dense_key, mask_key = f"{name}_orig", f"{name}_mask"

    def masked(module: nn.Module) -> torch.Tensor:
        return StraightThrough.apply(module._parameters[dense_key], module._buffers[mask_key])

    def hard(module: nn.Module) -> torch.Tensor:  # autograd's own product: W gets the gradient times T
        return module._parameters[dense_key] * module._buffers[mask_key]

    return property(masked if straight_through else hard, doc=f"W ⊙ T of {dense_key} and {mask_key}, computed at "
                                                              f"each read")


def masked_class(base: type, names: tuple[str, ...], straight_through: bool = True) -> type:
    """`base` (e.g. nn.Linear) with the properties that make `names` read as W ⊙ T: a class of its own for each
    module and each change, so that changing one module never changes another. `straight_through` False: the
    pruned weights get no gradient (`hard_masks`), as in Han et al.'s and gradual magnitude pruning."""
    if not names:
        return base
    namespace = {name: _masked_property(name, straight_through) for name in names}
    return type(f"Masked{base.__name__}", (base,), {"_dns_base": base, "_dns_masked": names,
                                                   "_dns_straight_through": straight_through,
                                                   "__reduce_ex__": _reduce_masked, **namespace})


def _reduce_masked(module: nn.Module, protocol: int):
    # pickle and deepcopy rebuild the class from its base and names: `torch.save(model)` works (loading it needs
    # weights_only=False), and a copy gets a class of its own
    kind = type(module)
    return _new_masked, (kind._dns_base, kind._dns_masked, kind._dns_straight_through), module.__getstate__()


def _new_masked(base: type, names: tuple[str, ...], straight_through: bool = True) -> nn.Module:
    module = base.__new__(base)
    module.__class__ = masked_class(base, names, straight_through)
    return module


def masked_names(module: nn.Module) -> tuple[str, ...]:
    return getattr(type(module), "_dns_masked", ())


def is_straight_through(module: nn.Module) -> bool:
    """Whether the masked weights of `module` pass the full gradient to W (DNS) rather than the gradient times T."""
    return getattr(type(module), "_dns_straight_through", True)


def is_masked(module: nn.Module, name: str) -> bool:
    return name in masked_names(module)


def dense(module: nn.Module, name: str) -> torch.Tensor:
    """The trainable dense W of `module.<name>`, masked or not."""
    return module._parameters[f"{name}_orig"] if is_masked(module, name) else getattr(module, name)


def mask_of(module: nn.Module, name: str) -> torch.Tensor:
    """The live mask T of `module.<name>`."""
    return module._buffers[f"{name}_mask"]


def update_mask_(weight: torch.Tensor, mask: torch.Tensor, a: float, b: float) -> tuple[int, int]:
    """The surgery rule h (`dns.thresholds.update_mask`) on `mask` in place from the dense `weight`: prune where
    |w| <= a, splice where |w| > b. Returns (pruned, spliced). One fused pass over float32 CPU tensors
    (`dns.kernels`), torch operations elsewhere; both compare in the tensors' precision."""
    weight = weight.detach()
    if (weight.device.type == "cpu" and weight.dtype == mask.dtype == torch.float32
            and weight.is_contiguous() and mask.is_contiguous()):
        return kernels.rule_pass(weight.numpy(), mask.numpy(), a, b)
    return update_mask_torch_(weight, mask, a, b)


def update_mask_torch_(weight: torch.Tensor, mask: torch.Tensor, a: float, b: float) -> tuple[int, int]:
    """`update_mask_` in torch operations (`dns.thresholds.update_mask`), for any device and dtype."""
    with torch.no_grad():
        new = update_mask(weight, mask, a, b)
        pruned, spliced = int((mask > new).count_nonzero()), int((new > mask).count_nonzero())
        mask.copy_(new)
        return pruned, spliced


def _initial_mask(module: nn.Module, name: str, mask: torch.Tensor | None, label: str) -> torch.Tensor:
    """The starting mask of `module.<name>` (all ones unless `mask`), or a one-line ValueError if it cannot be
    masked; `label` names the parameter in the message."""
    if is_masked(module, name):
        raise ValueError(f"{label} is already masked: one Surgeon per model (remove() the other first)")
    param = module._parameters.get(name)
    if param is None:
        raise ValueError(f"{type(module).__name__} has no parameter {name!r} to mask")
    if mask is not None and mask.shape != param.shape:
        raise ValueError(f"a mask of shape {list(mask.shape)} does not fit {label} of shape {list(param.shape)}")
    return torch.ones_like(param) if mask is None else mask.detach().to(param.device, param.dtype).clone()


def _attach(module: nn.Module, name: str, initial: torch.Tensor, straight_through: bool = True) -> torch.Tensor:
    if masked_names(module) and is_straight_through(module) != straight_through:  # one gradient rule per module
        raise ValueError(f"{type(module).__name__} has {'straight-through' if is_straight_through(module) else 'hard'} "
                         f"masks already: mask its parameters with one rule")
    _rename(module._parameters, name, f"{name}_orig")  # the same Parameter: an optimizer over it stays valid
    module.register_buffer(f"{name}_mask", initial)
    base = getattr(type(module), "_dns_base", type(module))
    module.__class__ = masked_class(base, masked_names(module) + (name,), straight_through)
    return initial


def attach_mask(module: nn.Module, name: str, mask: torch.Tensor | None = None,
                straight_through: bool = True) -> torch.Tensor:
    """Mask `module.<name>` (all ones unless `mask` is given); returns the live mask buffer."""
    return _attach(module, name, _initial_mask(module, name, mask, f"{type(module).__name__}.{name}"),
                   straight_through)


def _rename(entries: dict, old: str, new: str) -> None:
    """Rename a key in place, keeping its position (the order of `parameters()` and of the state dict)."""
    items = list(entries.items())
    entries.clear()
    entries.update((new if key == old else key, value) for key, value in items)


def _owners(model: nn.Module) -> dict[int, list[str]]:
    """id of every parameter -> the qualified names under which distinct modules hold it."""
    owners: dict[int, list[str]] = {}
    for prefix, module in model.named_modules():
        for key, value in module._parameters.items():
            if value is not None:
                owners.setdefault(id(value), []).append(f"{prefix}.{key}" if prefix else key)
    return owners


def attach_masks(model: nn.Module, layers: dict[str, nn.Module], prune_bias: bool = True,
                 initial: dict[str, torch.Tensor] | None = None, straight_through: bool = True) -> None:
    """Mask the weight (and the bias, if `prune_bias`) of every layer in `layers` (name -> module of `model`).

    `initial` maps parameter names such as 'fc1.weight' to starting masks; others start at all ones. A
    parameter already masked, or that another module holds too (tied weights), is refused before anything is
    masked. `straight_through` False gives hard masks: the gradient of W is that of W ⊙ T, zero where T is 0.
    """
    initial = initial or {}
    present = {name: [k for k in ("weight", "bias") if getattr(module, k, None) is not None]
               for name, module in layers.items()}
    unknown = sorted(set(initial) - {f"{name}.{k}" for name, keys in present.items() for k in keys})
    if unknown:
        raise ValueError(f"masks names {', '.join(unknown)}: no such conv or fc parameter")
    owners = _owners(model)
    prepared = {}  # (layer name, key) -> its starting mask: every check passes before anything is masked
    for name, module in layers.items():
        for key in present[name]:
            if key == "bias" and not prune_bias:
                continue
            holders = owners.get(id(dense(module, key)), [])
            if len(holders) > 1:
                raise ValueError(f"{' and '.join(holders)} are one tied tensor; DNS cannot mask a parameter that "
                                 f"two modules share: untie them")
            prepared[name, key] = _initial_mask(module, key, initial.get(f"{name}.{key}"), f"{name}.{key}")
    for (name, key), mask in prepared.items():
        _attach(layers[name], key, mask, straight_through)


def hold_pruned_at_zero_(module: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Set the dense W of `module`'s masked parameters to 0 where T is 0, and so every per-parameter tensor of the
    optimizer's state there (momentum, Adam's moments): with hard masks no gradient reaches those entries
    afterwards, so they stay exactly 0."""
    with torch.no_grad():
        for key in masked_names(module):
            weight, mask = dense(module, key), mask_of(module, key)
            weight.mul_(mask)
            state = optimizer.state.get(weight, {}) if optimizer is not None else {}
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                    value.mul_(mask)


def named_masks(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """('fc1.weight', the module, 'weight') for every masked parameter of `model`."""
    for prefix, module in model.named_modules():
        for key in masked_names(module):
            yield (f"{prefix}.{key}" if prefix else key), module, key


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under plain names ('fc1.weight'), holding the dense W, without masks: it loads
    into the unmasked model."""
    renamed = {f"{name}_orig": name for name, _, _ in named_masks(model)}
    dropped = {f"{name}_mask" for name, _, _ in named_masks(model)}
    return {renamed.get(k, k): v for k, v in model.state_dict().items() if k not in dropped}


def mask_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every mask of the model as a bool tensor under the name of the parameter it masks."""
    return {name: mask_of(module, key).bool().clone() for name, module, key in named_masks(model)}


def load_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Copy `masks` ('fc1.weight' -> 0/1 or bool tensor) into the model's live masks; every name must be masked."""
    live = {name: mask_of(module, key) for name, module, key in named_masks(model)}
    unknown = sorted(set(masks) - set(live))
    if unknown:
        raise KeyError(f"no masked parameter named {', '.join(unknown)}")
    with torch.no_grad():
        for name, value in masks.items():
            live[name].copy_(value)


def remove_masks(model: nn.Module) -> nn.Module:
    """W ⊙ T baked into each masked parameter, masks gone, every module of its own class again: an ordinary
    model (the same Parameter objects, so an optimizer over them stays valid). Returns `model`."""
    for module in model.modules():
        names = masked_names(module)
        if not names:
            continue
        module.__class__ = type(module)._dns_base
        for name in names:
            mask = module._buffers.pop(f"{name}_mask")
            with torch.no_grad():
                module._parameters[f"{name}_orig"].mul_(mask)  # exactly the W * T of the forward
            _rename(module._parameters, f"{name}_orig", name)
    return model
