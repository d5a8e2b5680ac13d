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


def model_of(checkpoint: dict[str, Any]) -> torch.nn.Module:
    """An untrained model of the checkpoint's architecture: its `dns.models` name built with its `model_args`
    (checkpoints before 2026-12-03 name only `num_classes`)."""
    from dns.models import get_model

    return get_model(checkpoint["model"], **(checkpoint.get("model_args") or {"num_classes": checkpoint["num_classes"]}))
