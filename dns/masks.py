"""Binary masks on parameters, with the straight-through gradient of DNS.

As in `torch.nn.utils.prune`, a masked parameter `module.<name>` keeps its 0/1 mask T in the buffer
`module.<name>_mask` and a forward pre-hook applies it. Unlike prune, `module.<name>` stays the trainable
`nn.Parameter` holding the dense W, and the backward hands W the full gradient of the masked weight, so
pruned weights keep learning and can be spliced back.

How: for the forward pass the parameter is pointed (`.data`) at a second tensor holding W ⊙ T; as soon as
its gradient is accumulated it is pointed back at W, which the optimizer then updates, pruned entries
included. Forward and backward thus run exactly as in a dense step, on the masked values, with no autograd
node (LeNet-300's steps take about 1 ms, so extra work shows). Outside a forward and its backward the
parameter holds W: optimizers, state dicts and DDP see dense W.

On CPU (float32) W ⊙ T is refreshed at the kept entries alone, from a list of their positions that the
surgery rule (`Mask.update`) keeps current; a mask changed any other way (in place, loaded, moved) is
noticed by its version and the list rebuilt. Elsewhere W ⊙ T is one multiplication.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from dns import kernels

CHANGES = 4096  # mask changes per update merged into the kept list; an update with more rebuilds it
SPARSE = 16  # W ⊙ T is refreshed at the kept entries alone when at most 1 in SPARSE is kept (fc1: 1 in 60)


class FlatViews(NamedTuple):
    """W, T and W ⊙ T as flat numpy arrays over the tensors' own memory, for the numba passes."""

    dense: np.ndarray
    mask: np.ndarray
    masked: np.ndarray


class Mask:
    """The mask of one parameter, and the swap that shows the forward pass W ⊙ T."""

    def __init__(self, module: nn.Module, name: str, mask: torch.Tensor):
        self.module = module
        self.param: nn.Parameter = getattr(module, name)
        self.buffer = f"{name}_mask"
        module.register_buffer(self.buffer, mask)
        self._dense: torch.Tensor | None = None  # W, while the parameter holds W ⊙ T
        self._masked: torch.Tensor | None = None  # the tensor that holds W ⊙ T, reused step after step
        self._views: FlatViews | None = None  # None off float32 CPU tensors
        self._views_of: tuple[int, int] | None = None  # the storage of W and T they view
        self._kept: np.ndarray | None = None  # the flat positions of T's ones, ascending (CPU)
        self._synced: int | None = None  # T's version when _masked and _kept last matched it
        self._changes: np.ndarray | None = None  # scratch: the positions an update changed
        self.param.register_post_accumulate_grad_hook(lambda _: self.show_dense())

    @property
    def mask(self) -> torch.Tensor:
        """The live mask T; looked up on the module, so `.to()` and `load_state_dict` reach it."""
        return self.module._buffers[self.buffer]

    @property
    def dense(self) -> torch.Tensor:
        """The dense W, whichever tensor the parameter holds at the moment."""
        return self.param.data if self._dense is None else self._dense

    def _flat_views(self, dense: torch.Tensor, mask: torch.Tensor) -> FlatViews | None:
        """The numpy views of W, T and W ⊙ T, made again only when W or T moves to other memory (a view
        keeps its tensor alive, so the same address means the same tensor); None unless float32 on CPU."""
        where = (dense.data_ptr(), mask.data_ptr())
        if where != self._views_of:
            if self._masked is None or self._masked.shape != dense.shape or self._masked.device != dense.device:
                with torch.inference_mode(False):  # a tensor made under inference mode could not be written later
                    self._masked = torch.empty_like(dense)
            flat = (dense.device.type == "cpu" and dense.dtype == mask.dtype == torch.float32
                    and dense.is_contiguous() and mask.is_contiguous())
            self._views = FlatViews(dense.view(-1).numpy(), mask.view(-1).numpy(),
                                    self._masked.view(-1).numpy()) if flat else None
            self._changes = np.empty(min(mask.numel(), CHANGES), np.int64) if flat else None
            self._views_of, self._synced = where, None
        return self._views

    def show_masked(self) -> None:
        dense, mask = self.dense, self.mask  # dense: also after a forward with autograd on whose backward never ran
        views = self._flat_views(dense, mask)
        if views is None:
            torch.mul(dense, mask, out=self._masked)
        elif self._synced != mask._version:  # first use, or T changed by other means than `update`
            torch.mul(dense, mask, out=self._masked)
            self._kept = mask.view(-1).nonzero().view(-1).numpy()
            self._synced = mask._version
        elif len(self._kept) * SPARSE <= len(views.dense):
            kernels.refresh(views.dense, views.masked, self._kept)
        else:  # a fuller mask: streaming through all of W beats jumping to each kept entry
            torch.mul(dense, mask, out=self._masked)
        self._dense, self.param.data = dense, self._masked

    def show_dense(self) -> None:
        if self._dense is not None:
            self.param.data, self._dense = self._dense, None

    def update(self, a: float, b: float) -> tuple[int, int]:  # (no torch.no_grad decorator: 1.6 µs a call)
        """Re-decide T with the surgery rule h (`dns.thresholds.update_mask`): prune where |w| <= a, splice
        where |w| > b. Returns how many entries it pruned and spliced."""
        dense, mask = self.dense, self.mask
        views = self._flat_views(dense, mask)
        if views is None:
            return update_mask_torch_(dense, mask, a, b)
        if self._synced != mask._version:  # no kept list yet: the plain pass, and a rebuild at the next forward
            return kernels.rule_pass(views.dense, views.mask, a, b)
        changed, spliced = kernels.rule_pass_kept(views.dense, views.mask, self._kept, a, b, self._changes)
        if changed > self._changes.size:
            self._synced = None
        elif changed:  # (writes through numpy leave T's version as it was)
            self._kept = kernels.merge_changes(self._kept, self._changes[:changed], views.masked)
        return changed - spliced, spliced


@torch.no_grad()
def update_mask_torch_(weight: torch.Tensor, mask: torch.Tensor, a: float, b: float) -> tuple[int, int]:
    """`Mask.update` in torch ops, for any device: T updated in place; returns (pruned, spliced)."""
    magnitude = weight.abs()
    scratch = torch.empty_like(mask)
    before = mask.sum()
    mask.mul_(torch.gt(magnitude, a, out=scratch))  # prune at or below a
    kept = mask.sum()
    torch.maximum(mask, torch.gt(magnitude, b, out=scratch), out=mask)  # splice above b
    return int(before - kept), int(mask.sum() - kept)


def _show_masked(module: nn.Module, inputs) -> None:
    for mask in module.dns_masks.values():
        mask.show_masked()


def _show_dense_after_inference(module: nn.Module, inputs, output) -> None:
    # with autograd on, the backward pass still needs W ⊙ T: the gradient hook swaps back then
    if not torch.is_grad_enabled():
        for mask in module.dns_masks.values():
            mask.show_dense()


def attach_mask(module: nn.Module, name: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mask `module.<name>` (all ones unless `mask` is given) and return the live mask buffer."""
    param = getattr(module, name)
    initial = torch.ones_like(param) if mask is None else mask.to(param.device, param.dtype)
    if not hasattr(module, "dns_masks"):
        module.dns_masks = {}
        module.register_forward_pre_hook(_show_masked)
        module.register_forward_hook(_show_dense_after_inference)
    module.dns_masks[name] = Mask(module, name, initial.detach().clone())
    return module.dns_masks[name].mask


def attach_masks(layers: dict[str, nn.Module], prune_bias: bool = True,
                 initial: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Mask the weight (and the bias, if `prune_bias`) of every layer in `layers`.

    `initial` maps parameter names such as 'fc1.weight' to starting masks; others start at all ones.
    Returns the live mask buffers as {layer name: {'weight': T, 'bias': T}}.
    """
    initial = initial or {}
    live: dict[str, dict[str, torch.Tensor]] = {}
    for name, module in layers.items():
        keys = ["weight"] + (["bias"] if prune_bias and module.bias is not None else [])
        live[name] = {key: attach_mask(module, key, initial.get(f"{name}.{key}")) for key in keys}
    return live


def named_masks(model: nn.Module):
    """('fc1.weight', its Mask) for every masked parameter of `model`."""
    for prefix, module in model.named_modules():
        for key, mask in getattr(module, "dns_masks", {}).items():
            yield f"{prefix}.{key}" if prefix else key, mask


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under plain names ('fc1.weight'), holding the dense W, without masks."""
    buffers = {f"{name}_mask" for name, _ in named_masks(model)}
    return {key: value for key, value in model.state_dict().items() if key not in buffers}


def mask_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every mask of the model as a bool tensor under the name of the parameter it masks."""
    return {name: mask.mask.bool().clone() for name, mask in named_masks(model)}
