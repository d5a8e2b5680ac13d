"""Checkpoints: one plain dict, loadable with `torch.load` and readable without this package.

    {"format": "dns-checkpoint", "version": 1, "model": "lenet5", "num_classes": 10,
     "model_args": {"num_classes": 10, "in_channels": 1},  # dns.models.get_model's arguments (+ arch: torchvision)
     "state_dict": {"fc1.weight": dense W, ...},      # the trainable weights, masked entries included
     "masks": {"fc1.weight": bool tensor, ...},       # absent for a layer without masks
     "layers": {"fc1": {"c", "iter_stop", "mu", "sigma", "a", "b", "pruned", "spliced"}, ...},
     "stage": "reference" | "final", "test_error": float, "config": {...}}

checkpoints/latest.pt adds "resume": where the run stands (stage, iteration) and all the next iteration
depends on: optimizer state, batch order, the gate's and the global random states, the history so far.

The effective weight of a layer is state_dict[name] * masks[name].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dns.files import write_atomically

FORMAT, VERSION = "dns-checkpoint", 1


def save_checkpoint(path: Path, **content: Any) -> None:
    """Write atomically: a reader, or a crash, never sees a half-written file."""
    write_atomically(path, lambda tmp: torch.save({"format": FORMAT, "version": VERSION, **content}, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; ValueError (one line) if it is not one."""
    from dns.export import MAGIC  # (dns.export builds on this module)

    try:
        with open(path, "rb") as f:
            if f.read(4) == MAGIC:
                raise ValueError(f"{path} is a .dns file (dns-export's compact model), not a checkpoint: dns-eval "
                                 f"and dns.load read it; dns-train and dns-export take the .pt checkpoint it came from")
    except OSError as e:
        raise ValueError(f"{path} does not read ({e.strerror}): give a .pt file written by dns-train") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}): "
                         f"give a .pt file written by dns-train") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dns checkpoint: give a .pt file written by dns-train")
    return checkpoint


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` holds a checkpoint written by `save_checkpoint`."""
    try:
        load_checkpoint(path)
    except ValueError:
        return False
    return True


def model_of(checkpoint: dict[str, Any]) -> torch.nn.Module:
    """An untrained model of the checkpoint's architecture: its `dns.models` name built with its `model_args`
    (checkpoints before 2026-12-03 name only `num_classes`)."""
    from dns.models import get_model

    return get_model(checkpoint["model"], **(checkpoint.get("model_args") or {"num_classes": checkpoint["num_classes"]}))


# what of a run's dataset settings a model's evaluation depends on (not where the data lies on this machine)
EVAL_DATASET_KEYS = ("name", "num_classes", "image_size", "resize_size", "pixels")


def trained_dataset(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The dataset settings the checkpoint's model was trained with (EVAL_DATASET_KEYS), {} if unrecorded."""
    dataset = (checkpoint.get("config") or {}).get("dataset") or checkpoint.get("dataset") or {}
    return {key: dataset[key] for key in EVAL_DATASET_KEYS if key in dataset}


def misfit(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None
           ) -> str | None:
    """Why `state_dict` (and `masks`) would not load into `model`, or None: tensors missing (but for integer
    buffers such as BatchNorm's num_batches_tracked, which `.dns` files do not keep), unexpected, or of another
    shape. Compares shapes only, so `model` may live on the meta device."""
    own = model.state_dict()
    missing = [key for key, value in own.items() if key not in state_dict and value.is_floating_point()]
    unexpected = [key for key in state_dict if key not in own]
    if missing or unexpected:
        return (f"the tensors do not fit the model: {len(missing)} missing ({', '.join(missing[:3])}), "
                f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    for kind, tensors in (("tensor", state_dict), ("mask", masks or {})):
        for key, value in tensors.items():
            if key not in own:
                return f"the {kind} {key} belongs to no tensor of the model"
            if tuple(value.shape) != tuple(own[key].shape):
                return f"the {kind} {key} is {list(value.shape)}, but the model's is {list(own[key].shape)}"
    return None


def fill(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`model.load_state_dict(state_dict)`, strict but for integer buffers the state may lack (`misfit`)."""
    problem = misfit(model, state_dict)
    if problem:
        raise ValueError(problem)
    model.load_state_dict(state_dict, strict=False)
    return model
