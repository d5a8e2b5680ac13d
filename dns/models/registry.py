"""A small explicit model registry, as in torchvision.models: `@register_model(input_shape)` on a builder."""

from __future__ import annotations

from typing import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {}


def register_model(input_shape: tuple[int, int, int]) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name, with the (C, H, W) of one input sample.

    A second model of the same name is an error.
    """
    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        if name in _BUILDERS:
            raise ValueError(f"a model named {name!r} is already registered")
        _BUILDERS[name], _INPUT_SHAPES[name] = builder, tuple(input_shape)
        return builder
    return register


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def get_model(name: str, **kwargs) -> nn.Module:
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _BUILDERS[name](**kwargs)


def input_shape(name: str) -> tuple[int, int, int]:
    """(C, H, W) of one sample the model takes, e.g. (1, 28, 28) for the MNIST networks."""
    if name not in _INPUT_SHAPES:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _INPUT_SHAPES[name]


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's conv and fully connected layers by name, in forward order: the layers DNS can prune."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def layer_kind(layer: nn.Module) -> str:
    return "conv" if isinstance(layer, nn.Conv2d) else "fc"
