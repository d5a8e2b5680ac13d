"""MNIST-style datasets as in-memory tensors, batched without per-sample transforms."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import datasets

from dns.config import DatasetConfig

# config name -> torchvision class; both read <root>/<ClassName>/raw/ with the same four IDX files
TORCHVISION_CLASSES = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def raw_folder(cfg: DatasetConfig) -> Path:
    return Path(cfg.root) / TORCHVISION_CLASSES[cfg.name].__name__ / "raw"


def prepare_dataset(cfg: DatasetConfig) -> None:
    """Make sure the data is there, downloading it if allowed; FileNotFoundError (one line, with the fix) if not."""
    folder = raw_folder(cfg)
    missing = [f for f in RAW_FILES if not (folder / f).is_file() and not (folder / f"{f}.gz").is_file()]
    if not missing:
        return
    fix = f"set DNS_DATA or dataset.root to the folder holding {folder.parent.name}/raw"
    if not cfg.download:
        raise FileNotFoundError(f"{cfg.name} not found: {folder} lacks {', '.join(missing)}; {fix}, "
                                f"or allow dataset.download=true")
    try:
        TORCHVISION_CLASSES[cfg.name](cfg.root, train=True, download=True)
    except Exception as e:  # no network, a full disk, ...
        raise FileNotFoundError(f"{cfg.name} is not in {folder} and downloading it failed "
                                f"({str(e).splitlines()[0]}); {fix}") from None


@dataclass
class Split:
    images: torch.Tensor  # float32 [N, 1, 28, 28], pixels / 256 as Caffe scales them
    labels: torch.Tensor  # int64 [N]

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


def load_split(cfg: DatasetConfig, train: bool) -> Split:
    prepare_dataset(cfg)
    ds = TORCHVISION_CLASSES[cfg.name](cfg.root, train=train)
    return Split(ds.data.unsqueeze(1).float().div_(256.0), ds.targets.long())


class ShuffledBatches:
    """Endless mini-batches of a split, reshuffled every epoch by a generator of its own.

    The tail of an epoch shorter than a batch is dropped, so every batch has `batch_size` samples.
    """

    def __init__(self, split: Split, batch_size: int, seed: int):
        self.split, self.batch_size = split, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.split.labels), generator=self.generator)
            self.position = 0
        index = self.order[self.position:self.position + self.batch_size].to(self.split.labels.device)
        self.position += self.batch_size
        return self.split.images[index], self.split.labels[index]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue with the batch that followed when `state` was taken."""
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"].clone(), int(state["position"])
