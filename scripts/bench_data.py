"""Throughput of augmented CIFAR-10 training batches, as dns-train draws them from memory on the CPU.

Writes a full-size CIFAR-10 in the official format (five pickles of 10,000 random 32x32 images, a test
batch, batches.meta; protocol 4, which stores the arrays as raw bytes as the official Python 2 pickles do,
so they load as fast) into a temporary folder, loads it with dns.data.load_split, then times
SplitBatches with the dataset's augmentation (random crops of the zero-padded image, flips) and its
normalization: batches of 128 (float32, normalized), a warm-up, then several repeats of --batches batches.
Prints images/s (median and best over the repeats) at torch's default thread count and at each --threads.

    python scripts/bench_data.py                       # default thread count
    python scripts/bench_data.py --threads 1 2         # and with 1 and with 2 threads
    python scripts/bench_data.py --batches 3000 --repeats 5 --no-augment
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dns.config import DatasetConfig
from dns.data import SplitBatches, augmentation, load_split


def write_cifar10(root: Path, seed: int = 0) -> None:
    """cifar-10-batches-py/ as torchvision unpacks it: python pickles with bytes keys, data uint8 [10000, 3072]."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = torch.randint(0, 256, (10000, 3072), generator=gen, dtype=torch.uint8).numpy()
        labels = torch.randint(0, 10, (10000,), generator=gen).tolist()
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=4))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"class"] * 10}, protocol=4))


def images_per_second(batches: SplitBatches, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * batches.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=2000, help="batches timed per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=200, help="batches drawn before timing")
    parser.add_argument("--threads", type=int, nargs="*", default=[], help="thread counts timed besides the default")
    parser.add_argument("--no-augment", action="store_true", help="time plain (normalized) batches instead")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        write_cifar10(Path(root))
        cfg = DatasetConfig(name="cifar10", root=root, download=False, augment=not args.no_augment)
        split = load_split(cfg, train=True)
        print(f"wrote and loaded {len(split.labels):,} images {tuple(split.images.shape[1:])} "
              f"{split.images.dtype} in {time.perf_counter() - start:.1f} s; augment={cfg.augment}, "
              f"batch {args.batch_size}, {args.repeats} x {args.batches} batches after {args.warmup}")
    for threads in [torch.get_num_threads(), *args.threads]:
        torch.set_num_threads(threads)
        batches = SplitBatches(split, args.batch_size, seed=0, augment=augmentation(cfg))
        images_per_second(batches, args.warmup)
        rates = [images_per_second(batches, args.batches) for _ in range(args.repeats)]
        print(f"threads {threads}: {statistics.median(rates):,.0f} images/s median, {max(rates):,.0f} best "
              f"({', '.join(f'{r:,.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
