"""MNIST-style and CIFAR datasets as in-memory tensors, batched without per-sample transforms."""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torchvision import datasets

from dns.cifar import CIFAR, load_cifar, normalize, prepare_cifar, random_crop_flip
from dns.config import DatasetConfig

# config name -> torchvision class; both read <root>/<ClassName>/raw/ with the same four IDX files
TORCHVISION_CLASSES = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def raw_folder(cfg: DatasetConfig) -> Path:
    return Path(cfg.root) / TORCHVISION_CLASSES[cfg.name].__name__ / "raw"


def prepare_dataset(cfg: DatasetConfig) -> int:
    """Make sure the data is there and sound, downloading it if allowed; returns the number of training samples.
    FileNotFoundError (one line, with the fix) if not."""
    if cfg.name in CIFAR:
        return prepare_cifar(cfg)
    folder = raw_folder(cfg)
    missing = [f for f in RAW_FILES if not (folder / f).is_file() and not (folder / f"{f}.gz").is_file()]
    if not missing:
        return check_mnist(folder)
    fix = f"set DNS_DATA or dataset.root to the folder holding {folder.parent.name}/raw"
    if not cfg.download:
        raise FileNotFoundError(f"{cfg.name} not found: {folder} lacks {', '.join(missing)}; {fix}, "
                                f"or allow dataset.download=true")
    made = [p for p in (folder, folder.parent, Path(cfg.root)) if not p.exists()]
    try:
        TORCHVISION_CLASSES[cfg.name](cfg.root, train=True, download=True)
    except Exception as e:  # no network, a full disk, ...
        for path in made:  # the empty folders the failed download left
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise FileNotFoundError(f"{cfg.name} is not in {folder} and downloading it failed "
                                f"({str(e).splitlines()[0]}); {fix}") from None
    return check_mnist(folder)


def idx_file(folder: Path, name: str) -> Path:
    """The IDX file `name` in `folder`, as is or gzipped (how the official files come)."""
    return folder / name if (folder / name).is_file() else folder / f"{name}.gz"


def read_idx(path: Path, header_only: bool = False) -> tuple[list[int], torch.Tensor | None]:
    """The dimensions and the uint8 array of an IDX file (gzipped if its name ends in .gz); with `header_only`
    the array is None and an uncompressed file is not read. FileNotFoundError (one line) if it is unsound."""
    def fault(reason: str) -> FileNotFoundError:
        return FileNotFoundError(f"{path} {reason}: replace it with the official file")

    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read(4 + 4 * 3) if header_only else f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise fault(f"does not read ({e})") from None
    ndim = data[3] if len(data) >= 4 else 0
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or ndim == 0:
        raise fault("is not an IDX file of bytes (bad header)")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(dims)
    # a gzipped file's size is known only once it is all read (and its checksum checked): when it is loaded
    size = len(data) if not header_only else None if path.suffix == ".gz" else path.stat().st_size
    if size is not None and size != expected:
        raise fault(f"is truncated or corrupt ({size:,} bytes, its header says {expected:,})")
    return dims, None if header_only else torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).view(dims)


def check_mnist(folder: Path) -> int:
    """Every IDX file sound, each split's images matching its labels, labels in 0-9, the training split the
    larger; returns the number of training samples. FileNotFoundError (one line) otherwise."""
    counts = {}
    for split in ("train", "t10k"):
        images, labels = idx_file(folder, f"{split}-images-idx3-ubyte"), idx_file(folder, f"{split}-labels-idx1-ubyte")
        dims, _ = read_idx(images, header_only=True)
        if len(dims) != 3 or dims[1:] != [28, 28]:
            raise FileNotFoundError(f"{images} holds images of shape {dims[1:]}, not 28x28: replace it with the "
                                    f"official file")
        label_dims, values = read_idx(labels)
        if len(label_dims) != 1 or label_dims[0] != dims[0]:
            raise FileNotFoundError(f"{images.name} holds {dims[0]:,} images but {labels.name} {label_dims[0]:,} "
                                    f"labels: replace them with the official files of one split")
        wrong = (values >= 10).nonzero().flatten()
        if len(wrong):
            raise FileNotFoundError(f"{labels} holds {len(wrong):,} labels outside 0-9 (the first at index "
                                    f"{int(wrong[0])}: {int(values[wrong[0]])}): replace it with the official file")
        counts[split] = dims[0]
    if counts["train"] < counts["t10k"]:
        raise FileNotFoundError(f"{folder} holds fewer training samples ({counts['train']:,}) than test samples "
                                f"({counts['t10k']:,}): are the train-* and t10k-* files swapped?")
    return counts["train"]


@dataclass
class Split:
    """A dataset split in memory. `inputs` turns stored images (all, or a slice or batch) into model inputs."""

    images: torch.Tensor  # float32 [N, 1, 28, 28], pixels / 256 as Caffe scales them | CIFAR: uint8 [N, 3, 32, 32]
    labels: torch.Tensor  # int64 [N]
    # per channel, of pixels / 255: uint8 images normalized batch by batch (a float copy of CIFAR-10 is 600 MB)
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """What the model takes for these stored images: float32, normalized if the split says how."""
        return images if self.mean is None else normalize(images, self.mean, self.std)

    def to(self, device: torch.device) -> "Split":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))


def load_split(cfg: DatasetConfig, train: bool) -> Split:
    if cfg.name in CIFAR:  # checked (and downloaded) as prepare_dataset does, while read
        layout = CIFAR[cfg.name]
        return Split(*load_cifar(cfg, train), mean=layout.mean, std=layout.std)
    prepare_dataset(cfg)
    folder, split = raw_folder(cfg), "train" if train else "t10k"
    _, images = read_idx(idx_file(folder, f"{split}-images-idx3-ubyte"))
    _, labels = read_idx(idx_file(folder, f"{split}-labels-idx1-ubyte"))
    return Split(images.unsqueeze(1).float().div_(256.0), labels.long())


# stored images of a batch and the batches' generator -> augmented images, same shape and dtype
Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def augmentation(cfg: DatasetConfig) -> Optional[Augmentation]:
    """The training augmentation SplitBatches applies besides max_shift: CIFAR's crops and flips unless
    dataset.augment=false; None for MNIST-style data, which is shifted by max_shift alone."""
    return random_crop_flip if cfg.name in CIFAR and cfg.augment else None


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by its own random whole-pixel offset in [-max_shift, max_shift] along each axis; the
    border pixels (MNIST's background) fill what moves in."""
    n, c, h, w = images.shape
    side = w + 2 * max_shift
    padded = F.pad(images, (max_shift,) * 4, mode="replicate").view(n, c, -1)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1, 1), generator=generator).to(images.device)
    window = torch.arange(h, device=images.device)[:, None] * side + torch.arange(w, device=images.device)
    index = window.view(1, 1, -1) + (dy * side + dx)  # each image's window into its padded copy, flattened
    return padded.gather(2, index.expand(n, c, -1)).view(n, c, h, w)


class SplitBatches:
    """Endless mini-batches of an in-memory split, reshuffled every epoch by a generator of its own.

    The tail of an epoch shorter than a batch is dropped, so every batch has `batch_size` samples.
    In a distributed run rank r of `world_size` takes the r-th of every world_size consecutive batches.
    With `shuffle` False the samples come in file order, epoch after epoch, a batch running over the end
    of one epoch into the next: how Caffe's data layer reads the MNIST LMDB the authors trained on.
    With `max_shift` > 0 each image is moved by up to that many pixels (`random_shift`), and with `augment`
    (e.g. `random_crop_flip`) each batch goes through it, both drawing from the same generator, so a resumed
    run sees the same shifts, crops and flips. Batches come out as `split.inputs` makes them: float32.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, max_shift: int = 0, augment: Optional[Augmentation] = None):
        self.split, self.batch_size, self.rank, self.world_size = split, batch_size, rank, world_size
        self.shuffle, self.max_shift, self.augment = shuffle, max_shift, augment
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        """Where the batches stand: a resumed run goes on with the very same order."""
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"].clone(), state["position"]

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.batch_size * self.world_size  # the batches of every rank, together
        count = len(self.split.labels)
        if self.shuffle:
            if self.position + span > len(self.order):
                self.order = torch.randperm(count, generator=self.generator)
                self.position = 0
            start = self.position + self.rank * self.batch_size
            index = self.order[start:start + self.batch_size]
            self.position += span
        else:
            index = (self.position + self.rank * self.batch_size + torch.arange(self.batch_size)) % count
            self.position = (self.position + span) % count
        index = index.to(self.split.labels.device)
        images = self.split.images.index_select(0, index)  # the same as images[index], ten times faster
        if self.max_shift > 0:
            images = random_shift(images, self.max_shift, self.generator)
        if self.augment is not None:
            images = self.augment(images, self.generator)
        return self.split.inputs(images), self.split.labels.index_select(0, index)
