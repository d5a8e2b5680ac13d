"""Data-parallel runs under `torchrun`: one process per device, gradients averaged by DistributedDataParallel.

Mask decisions need no communication: every rank holds the same weights after each step, computes the same
thresholds and draws the same gate numbers from the same seed, so the masks agree; `fingerprint` lets a run
check that at the end. Only rank 0 writes reports and checkpoints.
"""

from __future__ import annotations

import hashlib
import inspect
import os

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them in the environment; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def start(device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this rank's device."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module the training step calls: DDP over `model` in a distributed run, else `model` itself.

    The masks attached later leave the parameters as they are, so it stays valid. Buffers (the masks) are
    not broadcast at every forward: they agree already, and AlexNet's would cost 244 MB a step.
    """
    if not dist.is_initialized():
        return model
    ddp = nn.parallel.DistributedDataParallel
    # torch >= 2.14 names the switch forward_sync_buffers (and deprecates broadcast_buffers)
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else "broadcast_buffers"
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **{no_sync: False})


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any rank (every rank must call it): ranks stop together or not at all."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer (weights and masks), bit for bit."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ranks_agree(model: nn.Module) -> bool:
    """Whether every rank holds bitwise the same weights and masks (True outside a distributed run)."""
    if not dist.is_initialized():
        return True
    mine = fingerprint(model)
    everyone: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return all(f == mine for f in everyone)
