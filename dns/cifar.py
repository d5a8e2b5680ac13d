"""CIFAR-10 and CIFAR-100 from torchvision's folders of python pickles, held as uint8 tensors.

The training augmentation (random crops of the zero-padded image, horizontal flips) and the per-channel
normalization work on whole batches as tensor ops, so batches come from memory without a DataLoader.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import datasets

from dns.config import DatasetConfig

IMAGE_SHAPE = (3, 32, 32)
PADDING = 4  # the standard CIFAR augmentation: 32x32 crops of the image zero-padded to 40x40


@dataclass(frozen=True)
class CifarLayout:
    """Where torchvision puts one CIFAR variant under the data root, and what its pickles hold."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes  # the labels of each batch: a list of ints
    names_key: bytes  # the class names in the meta file
    num_classes: int
    mean: tuple[float, float, float]  # per channel, of pixels / 255, over the training set
    std: tuple[float, float, float]
    torchvision_class: type

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


CIFAR = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "batches.meta", b"labels", b"label_names", 10,
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), datasets.CIFAR10),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "meta", b"fine_labels", b"fine_label_names",
                            100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), datasets.CIFAR100),
}


def cifar_folder(cfg: DatasetConfig) -> Path:
    return Path(cfg.root) / CIFAR[cfg.name].folder


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: a data file must not be able to run code."""

    NUMPY_NAMES = {"_reconstruct", "ndarray", "dtype", "_frombuffer"}

    def find_class(self, module: str, name: str):
        numpy_module = module == "numpy" or module.startswith(("numpy.core.", "numpy._core."))
        if (numpy_module and name in self.NUMPY_NAMES) or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)  # _codecs.encode: how protocol 2 stores bytes in Python 3
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")


def one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def unsound(path: Path, reason: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path} is truncated or corrupt ({reason}): replace it with the official file, "
                             f"or delete it and allow dataset.download=true")


def read_pickle(path: Path) -> dict:
    """The dict a CIFAR file holds, keys as bytes (the files come from Python 2); FileNotFoundError (one line)."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: put the official file there, "
                                f"or allow dataset.download=true") from None
    except Exception as e:  # a truncated pickle: EOFError, UnpicklingError, ...
        raise unsound(path, one_line(e)) from None
    if not isinstance(entry, dict):
        raise unsound(path, f"it holds a {type(entry).__name__}, not a dict")
    return entry


def tensor_of(entry: dict, key: bytes, path: Path) -> torch.Tensor:
    """entry[key] as a tensor (a copy: the arrays may be read-only); FileNotFoundError if absent or no numbers."""
    if key not in entry:
        raise unsound(path, f"no {key!r} entry")
    try:
        return torch.tensor(entry[key])
    except (TypeError, ValueError, RuntimeError) as e:
        raise unsound(path, f"{key!r} holds no array of numbers: {one_line(e)}") from None


def read_batch(path: Path, layout: CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, 32, 32] and int64 labels [N] of one batch file; FileNotFoundError (one line) if unsound."""
    entry = read_pickle(path)
    images, labels = tensor_of(entry, b"data", path), tensor_of(entry, layout.label_key, path)
    size = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    if images.dtype != torch.uint8 or images.dim() != 2 or images.shape[1] != size or len(images) == 0:
        raise unsound(path, f"data is {images.dtype} {list(images.shape)}, not uint8 [N, {size}]")
    if labels.shape != (len(images),) or labels.is_floating_point():
        raise unsound(path, f"{len(images)} images but labels of shape {list(labels.shape)}")
    if labels.min() < 0 or labels.max() >= layout.num_classes:
        raise unsound(path, f"labels outside [0, {layout.num_classes})")
    # each row holds the red, green and blue planes one after the other, each 32x32 row-major
    return images.view(-1, *IMAGE_SHAPE), labels.long()


def check_meta(path: Path, layout: CifarLayout) -> None:
    names = read_pickle(path).get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.num_classes:
        raise unsound(path, f"{layout.names_key!r} is no list of {layout.num_classes} class names")


def check_present(cfg: DatasetConfig) -> None:
    """FileNotFoundError (one line, naming the missing files, with the fix) unless every file is there."""
    layout, folder = CIFAR[cfg.name], cifar_folder(cfg)
    missing = [name for name in layout.files if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{cfg.name} not found: {folder} lacks {', '.join(missing)}; set DNS_DATA or "
                                f"dataset.root to the folder holding {layout.folder}, or allow dataset.download=true")


def check_cifar(cfg: DatasetConfig) -> int:
    """The number of training images; FileNotFoundError (one line, naming what is missing or unsound, with the
    fix) unless every file reads."""
    check_present(cfg)
    layout, folder = CIFAR[cfg.name], cifar_folder(cfg)
    counts = [len(read_batch(folder / name, layout)[1]) for name in (*layout.train_files, *layout.test_files)]
    check_meta(folder / layout.meta_file, layout)
    return sum(counts[:len(layout.train_files)])


def prepare_cifar(cfg: DatasetConfig) -> int:
    """Make sure every file is there and reads, downloading the set if allowed; returns the number of training
    images. FileNotFoundError (one line) if not."""
    try:
        return check_cifar(cfg)
    except FileNotFoundError:
        if not cfg.download:
            raise
    folder = cifar_folder(cfg)
    try:  # torchvision checks each file's md5 and fetches and unpacks the archive again if one differs
        CIFAR[cfg.name].torchvision_class(cfg.root, train=True, download=True)
    except Exception as e:  # no network, a full disk, ...
        raise FileNotFoundError(f"{cfg.name} could not be read from {folder} and downloading it failed "
                                f"({' '.join(str(e).split())}); set DNS_DATA or dataset.root to the folder "
                                f"holding {folder.name}") from None
    return check_cifar(cfg)


def read_split(cfg: DatasetConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    layout, folder = CIFAR[cfg.name], cifar_folder(cfg)
    parts = [read_batch(folder / name, layout) for name in (layout.train_files if train else layout.test_files)]
    return torch.cat([images for images, _ in parts]), torch.cat([labels for _, labels in parts])


def load_cifar(cfg: DatasetConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, 32, 32] and int64 labels [N] of the training or test files, in file order.

    As prepare_cifar, but each file is read once: the checks are those of reading it.
    """
    try:
        check_present(cfg)
        return read_split(cfg, train)
    except FileNotFoundError:
        if not cfg.download:
            raise
    prepare_cifar(cfg)  # downloads, then checks every file
    return read_split(cfg, train)


# Constants made once per device: a host-to-GPU copy each batch would wait for the GPU to finish its work.

@lru_cache(maxsize=None)
def _scale_shift(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    """Per-channel factors [1, C, 1, 1] of the normalization."""
    scale = torch.tensor([1 / (255 * s) for s in std], dtype=torch.float32, device=device)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32, device=device)
    return scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """float32 (pixels / 255 - mean) / std, per channel, of uint8 images [N, C, H, W]."""
    scale, shift = _scale_shift(tuple(mean), tuple(std), images.device)
    return images.to(torch.float32, copy=True).mul_(scale).add_(shift)  # two passes over the batch, not three


@lru_cache(maxsize=None)
def _windows(h: int, w: int, side: int, device: torch.device) -> torch.Tensor:
    """[2, h * w]: where the window at (0, 0) reads each output pixel of a flattened padded plane, plain, mirrored."""
    rows, columns = torch.arange(h).view(h, 1) * side, torch.arange(w)
    return torch.stack([rows + columns, rows + (w - 1 - columns)]).view(2, h * w).to(device)


def crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
              padding: int = PADDING) -> torch.Tensor:
    """Image n's H x W window at (top[n], left[n]) of its copy zero-padded by `padding` on each side, mirrored
    left-right where flip[n]: one gather for the whole batch (offsets in [0, 2 * padding])."""
    n, c, h, w = images.shape
    side = w + 2 * padding
    padded = F.pad(images, (padding,) * 4).view(n, c, -1)
    # each image's window is the one at (0, 0) moved by its offset: one (small) copy to the images' device
    start, mirrored = torch.stack([top * side + left, flip.long()]).to(images.device)
    index = _windows(h, w, side, images.device).index_select(0, mirrored) + start.view(n, 1)  # [n, h * w], all channels
    return padded.gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = PADDING) -> torch.Tensor:
    """`crop_flip` with offsets uniform in [0, 2 * padding] and flips with probability 1/2, drawn from `generator`
    (the batches' own, so that a resumed run draws the same)."""
    n = len(images)
    top, left = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return crop_flip(images, top, left, flip, padding)
