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

import os
from pathlib import Path
from typing import Any

import torch

FORMAT, VERSION = "dns-checkpoint", 1


def save_checkpoint(path: Path, **content: Any) -> None:
    """Write atomically: a reader, or a crash, never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, **content}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; ValueError (one line) if it is not one."""
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


def fill(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`model.load_state_dict(state_dict)`, strict but for integer buffers the state may lack (BatchNorm's
    num_batches_tracked, a count of training steps, which `.dns` files do not keep)."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    own = model.state_dict()
    missing = [key for key in missing if own[key].is_floating_point()]
    if missing or unexpected:
        raise ValueError(f"the tensors do not fit the model: {len(missing)} missing ({', '.join(missing[:3])}), "
                         f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    return model
