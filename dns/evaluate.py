"""Test error of a model, and a checkpoint brought back to a masked model for evaluation."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from dns.config import DatasetConfig
from dns.data import Split, load_split
from dns.export import byte_report
from dns.checkpoint import fill, model_of
from dns.report import dense_rows, layer_rows, totals
from dns.sparse import sparse_layers, sparsify
from dns.surgeon import Surgeon


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int) -> float:
    """Top-1 error on `split`, a fraction in [0, 1]; the stored images go through `split.inputs` (never augmented)."""
    was_training = model.training
    model.eval()
    wrong = 0
    for start in range(0, len(split.labels), batch_size):
        logits = model(split.inputs(split.images[start:start + batch_size]))
        wrong += int((logits.argmax(1) != split.labels[start:start + batch_size]).sum())
    model.train(was_training)
    return wrong / len(split.labels)


def topk_errors(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """For each k, how many samples' label is not among their k highest logits (k above the class count: all)."""
    k_max = min(max(ks), logits.shape[1])
    hits = logits.topk(k_max, dim=1).indices == labels[:, None]  # [N, k_max], at most one True a row
    return {k: int((~hits[:, :min(k, k_max)].any(1)).sum()) for k in ks}


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Top-1 and top-5 error over every (images, labels) batch, as fractions in [0, 1].

    The batches are moved to the model's device, so a DataLoader of CPU tensors will do.
    """
    was_training = model.training
    model.eval()
    device = next(itertools.chain(model.parameters(), model.buffers())).device  # (SparseLinear layers hold buffers)
    wrong, seen = {1: 0, 5: 0}, 0
    for images, labels in batches:
        for k, n in topk_errors(model(images.to(device)), labels.to(device)).items():
            wrong[k] += n
        seen += len(labels)
    model.train(was_training)
    return {"top1": wrong[1] / seen, "top5": wrong[5] / seen}


def restore(checkpoint: dict[str, Any]) -> tuple[nn.Module, Surgeon]:
    """The checkpoint's model with its masks attached, and a surgeon holding its per-layer settings."""
    model = fill(model_of(checkpoint), checkpoint["state_dict"])
    masks = checkpoint.get("masks") or {}
    surgeon = Surgeon(model, layers=[], prune_bias=any(k.endswith(".bias") for k in masks), masks=masks)
    surgeon.load_layer_settings(checkpoint.get("layers") or {})
    return model, surgeon


TestFn = Callable[[nn.Module], dict[str, float]]  # model -> {"top1": error, "top5": error (ImageNet only)}


def evaluator(dataset: DatasetConfig, device: torch.device) -> TestFn:
    """The test-set evaluation of `dataset`: MNIST-like splits held on `device`, ImageFolder's val/ streamed."""
    if dataset.name == "imagenet":
        from dns.imagenet import eval_batches

        val = eval_batches(Path(dataset.root) / "val", dataset.test_batch_size, dataset.workers,
                           dataset.image_size, dataset.resize_size, dataset.pixels)
        return lambda model: evaluate_batches(model, val)
    test = load_split(dataset, train=False).to(device)
    return lambda model: {"top1": evaluate(model, test, dataset.test_batch_size)}


def evaluation_report(checkpoint: dict[str, Any], test: TestFn, dataset: str, sparse: bool = False) -> dict[str, Any]:
    """The fields of report.json that a checkpoint alone determines: layers, totals and the test error(s).
    sparse: the errors of the model with sparse fully connected layers (dns.sparse), which ones in `sparse_layers`."""
    model, surgeon = restore(checkpoint)
    rows, dense = layer_rows(surgeon), dense_rows(surgeon)
    if sparse:
        surgeon.remove()  # W ⊙ T baked in: the plain model, as dns.load gives it
        model = sparsify(model.eval())
    errors = test(model)
    result = {"final_error": errors["top1"]}
    if "top5" in errors:
        result["final_top5_error"] = errors["top5"]
    return {"model": checkpoint["model"], "arch": (checkpoint.get("model_args") or {}).get("arch"), "dataset": dataset, "status": "evaluated", "layers": rows,
            "dense_layers": dense, "total": totals(rows, dense), "test": result, "bytes": byte_report(checkpoint),
            **({"sparse_layers": sparse_layers(model)} if sparse else {})}
