"""A small explicit model registry, as in torchvision.models: `@register_model(input_shape)` on a builder."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {}


def register_model(input_shape: tuple[int, int, int]) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name, with the (C, H, W) of one input sample it was designed for.

    Builders take the keyword arguments `num_classes` and `in_channels` (the dataset's), defaulting to the
    model's native ones. A second model of the same name is an error.
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


def input_error(model: nn.Module, shape: tuple[int, int, int], num_classes: int, *,
                name: str | None = None) -> str | None:
    """None if `model` maps a batch of (C, H, W) = `shape` images to [batch, num_classes] logits, else a
    one-line message saying why not: the model (`name`, its registered name, if given), the input, the
    layer that failed and the first line of its error.

    It runs one forward pass of 2 samples on the model's device: build the model under
    `with torch.device("meta")` and the check allocates no memory and computes nothing, so even a large
    network is checked at once. The model runs in eval mode for the pass, then gets its mode back.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("meta")
    names = {m: n for n, m in model.named_modules()}
    running: list[tuple[nn.Module, tuple]] = []  # modules whose forward has begun and not returned, outermost first

    def enter(module, args):
        running.append((module, args))

    def leave(module, args, output):
        running.pop()

    hooks = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *shape, device=device))
    except Exception as e:  # whatever the layers raise: a shape mismatch, an assert on the image size, ...
        lines = str(e).strip().splitlines()
        problem = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        module, args = running[-1] if running else (model, ())
        if module is not model:  # the innermost layer that was running; the model's own code needs no name
            given = f" on its {list(args[0].shape)} input" if args and isinstance(args[0], torch.Tensor) else ""
            problem = f"{names[module]} ({type(module).__name__}) fails{given}: {problem}"
    else:
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (2, num_classes):
            return None
        got = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        problem = f"its output for 2 images is {got}, not [2, {num_classes}]"
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    label = name or type(model).__name__
    native = f" ({name}'s native input is {'x'.join(map(str, _INPUT_SHAPES[name]))})" if name in _INPUT_SHAPES else ""
    return f"{label} cannot take {'x'.join(map(str, shape))} images{native}: {problem}"
