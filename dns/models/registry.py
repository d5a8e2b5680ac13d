"""A small explicit model registry, as in torchvision.models: `@register_model` on a builder."""

from __future__ import annotations

from typing import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register `builder` under its function name; a second model of the same name is an error."""
    name = builder.__name__
    if name in _BUILDERS:
        raise ValueError(f"a model named {name!r} is already registered")
    _BUILDERS[name] = builder
    return builder


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def get_model(name: str, **kwargs) -> nn.Module:
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _BUILDERS[name](**kwargs)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's conv and fully connected layers by name, in forward order: the layers DNS can prune."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def layer_kind(layer: nn.Module) -> str:
    return "conv" if isinstance(layer, nn.Conv2d) else "fc"
