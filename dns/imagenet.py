"""ImageNet-layout data: an ImageFolder tree read from disk by DataLoader workers, decoded and augmented per sample.

The tree is root/train/<class>/*.JPEG and root/val/<class>/*.JPEG, as torchvision.datasets.ImageFolder reads it;
classes are numbered by sorted folder name, so train and val must hold the same class folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's RGB statistics, as torchvision's models use
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)  # bvlc_alexnet's mean pixel, in Caffe's BGR order and 0-255 scale
LAYOUT = "root/train/<class>/*.JPEG and root/val/<class>/*.JPEG"


def check_image_folder(root: str | Path) -> list[str]:
    """The class folder names, or FileNotFoundError (one line: what is wrong and the fix) unless `root` holds
    train/ and val/ in ImageFolder layout."""
    root, classes = Path(root), {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"imagenet: {folder} is missing; set dataset.root (or DNS_DATA) to a folder "
                                    f"holding {LAYOUT}")
        entries = list(folder.iterdir())
        if not entries:
            raise FileNotFoundError(f"imagenet: {folder} is empty; put each class's images in {folder}/<class>/")
        classes[split] = sorted(p.name for p in entries if p.is_dir())
        if not classes[split]:
            raise FileNotFoundError(f"imagenet: {folder} has no class folders; sort its images into "
                                    f"{folder}/<class>/ folders named as in train/")
        if not holds_images(folder, 1):
            raise FileNotFoundError(f"imagenet: the class folders of {folder} hold no images ({', '.join(IMG_EXTENSIONS)})"
                                    f"; put each class's images in {folder}/<class>/")
    only_train = sorted(set(classes["train"]) - set(classes["val"]))
    only_val = sorted(set(classes["val"]) - set(classes["train"]))
    if only_train or only_val:
        raise FileNotFoundError(f"imagenet: the class folders of {root / 'train'} and {root / 'val'} differ "
                                f"(only in train: {', '.join(only_train[:3]) or '-'}; only in val: "
                                f"{', '.join(only_val[:3]) or '-'}); give both the same class folders, as "
                                f"labels are numbered by sorted folder name")
    return classes["train"]


def holds_images(folder: str | Path, count: int) -> bool:
    """Whether the class folders of `folder` hold at least `count` images (stops counting there)."""
    seen = 0
    for class_dir in os.scandir(folder):
        if class_dir.is_dir():
            seen += sum(1 for f in os.scandir(class_dir) if f.name.lower().endswith(IMG_EXTENSIONS))
            if seen >= count:
                return True
    return False


class CaffePixels:
    """RGB in [0, 1] -> BGR in [0, 255] minus Caffe's mean pixel: the input the Caffe model zoo's weights expect."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(CAFFE_MEAN_BGR).view(3, 1, 1)
        return image.flip(0) * 255 - mean


def pixel_transform(pixels: str) -> list:
    """Image to tensor: `torchvision` (RGB normalised by ImageNet's mean and std) or `caffe` (see CaffePixels)."""
    if pixels not in ("torchvision", "caffe"):
        raise ValueError(f"dataset.pixels={pixels!r}: use torchvision or caffe")
    return [transforms.ToTensor(), CaffePixels() if pixels == "caffe" else transforms.Normalize(MEAN, STD)]


def train_transform(image_size: int = 227, pixels: str = "torchvision") -> transforms.Compose:
    """torchvision's ImageNet recipe; Caffe instead cropped 227 at random from 256×256 images, mean-subtracted."""
    return transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                               *pixel_transform(pixels)])


def eval_transform(image_size: int = 227, resize_size: int = 256, pixels: str = "torchvision") -> transforms.Compose:
    """The single centre crop the paper's errors are measured on."""
    return transforms.Compose([transforms.Resize(resize_size), transforms.CenterCrop(image_size),
                               *pixel_transform(pixels)])


def read_image(path: str):
    """ImageFolder's loader, naming the file that does not decode (a worker's error reaches the run's report)."""
    try:
        return datasets.folder.default_loader(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable image ({type(e).__name__}): remove or replace it") from None


class SeededSamples(Dataset):
    """An ImageFolder indexed by (index, seed): the sample's random transform draws from `seed` alone.

    The global RNG is forked, so the caller's (or a worker's) random state is left as it was.
    """

    def __init__(self, folder: datasets.ImageFolder):
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.folder[index]


class ImageFolderBatches:
    """Endless training batches (images, labels) of an ImageFolder, read by `workers` DataLoader workers.

    Epoch e visits a permutation drawn from torch.Generator().manual_seed(seed + e); rank r of `world_size`
    takes every world_size-th index of it (the tail that does not divide evenly is dropped, so every rank
    gets as many), in batches of `batch_size`, the last incomplete batch dropped.

    Reproducible for a given seed, folder and world size: the samples of every batch, and their crops and
    flips, for any number of workers and across a resume from `state_dict()`, since each sample's transform
    draws from a seed of its own, drawn with the permutation. Not covered: other torchvision or Pillow
    versions (decoding and resizing may differ in the last bit), and anything outside this loader.
    """

    def __init__(self, folder: str | Path, batch_size: int, seed: int, image_size: int = 227, workers: int = 4,
                 rank: int = 0, world_size: int = 1, pixels: str = "torchvision"):
        self.samples = SeededSamples(datasets.ImageFolder(str(folder), transform=train_transform(image_size, pixels),
                                                          loader=read_image))
        self.batch_size, self.seed, self.workers = batch_size, seed, workers
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = len(self.samples) // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{folder} holds {len(self.samples)} images, fewer than one batch of {batch_size} "
                             f"for each of {world_size} ranks")
        self.epoch, self.position = 0, 0  # `position` batches of `epoch` have been returned
        self.loader = None  # the running DataLoader iterator of this epoch

    def epoch_samples(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's (index, transform seed) pairs of one epoch, in order; the same on every call."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.samples), generator=generator)
        seeds = torch.randint(2**62, (len(order),), generator=generator)
        mine = slice(self.rank, len(order) // self.world_size * self.world_size, self.world_size)
        return list(zip(order[mine].tolist(), seeds[mine].tolist()))

    def start_loader(self):
        samples = self.epoch_samples(self.epoch)
        size = self.batch_size
        batches = [samples[i:i + size] for i in range(self.position * size, self.batches_per_epoch * size, size)]
        # a generator of its own for the workers' base seed, which DataLoader would draw from the global RNG
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(DataLoader(self.samples, batch_sampler=batches, num_workers=self.workers, generator=generator))

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position == self.batches_per_epoch:
            self.epoch, self.position, self.loader = self.epoch + 1, 0, None
        if self.loader is None:
            self.loader = self.start_loader()
        batch = next(self.loader)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue with the batch that followed when `state` was taken."""
        self.epoch, self.position, self.loader = int(state["epoch"]), int(state["position"]), None


def eval_batches(folder: str | Path, batch_size: int, workers: int = 4, image_size: int = 227,
                 resize_size: int = 256, pixels: str = "torchvision") -> DataLoader:
    """Evaluation batches (images, labels) of an ImageFolder, in file order, centre-cropped; every sample once."""
    dataset = datasets.ImageFolder(str(folder), transform=eval_transform(image_size, resize_size, pixels),
                                   loader=read_image)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
