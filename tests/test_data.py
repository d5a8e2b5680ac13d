import struct

import pytest
import torch

from dns.config import DatasetConfig
from dns.data import SplitBatches, Split, load_split, prepare_dataset, random_shift


def write_idx(path, data: torch.Tensor):
    """An IDX file (the MNIST format): magic, dimensions, then unsigned bytes."""
    magic = 0x0800 + data.dim()
    path.write_bytes(struct.pack(f">I{data.dim()}I", magic, *data.shape) + bytes(data.flatten().tolist()))


def fake_fashion_mnist(root, n_train=6, n_test=4):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        images[0, 0, 0] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.arange(n, dtype=torch.uint8) % 10)


def test_fashion_mnist_loads_as_tensors_scaled_like_caffe(tmp_path):
    fake_fashion_mnist(tmp_path)
    cfg = DatasetConfig(name="fashion_mnist", root=str(tmp_path), download=False)
    train, test = load_split(cfg, train=True), load_split(cfg, train=False)
    assert train.images.shape == (6, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    assert train.images[0, 0, 0, 0].item() == 255 / 256  # Caffe's scale 0.00390625, not 1/255
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5]


def test_real_mnist_has_the_official_sizes(data_root):
    cfg = DatasetConfig(name="mnist", root=str(data_root), download=False)
    train, test = load_split(cfg, train=True), load_split(cfg, train=False)
    assert len(train.labels) == 60000 and len(test.labels) == 10000
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert 0.0 <= train.images.min() and train.images.max() == 255 / 256


def test_missing_data_names_the_path_and_the_fix(tmp_path):
    cfg = DatasetConfig(name="mnist", root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(FileNotFoundError, match=r"nowhere/MNIST/raw lacks .*set DNS_DATA or dataset.root"):
        prepare_dataset(cfg)


def test_batches_cover_each_epoch_once_and_repeat_by_seed():
    split = Split(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    batches = SplitBatches(split, batch_size=3, seed=1)
    epoch = torch.cat([next(batches)[1] for _ in range(3)])  # 9 of 10; the short tail is dropped
    assert len(set(epoch.tolist())) == 9
    again = SplitBatches(split, batch_size=3, seed=1)
    assert torch.equal(torch.cat([next(again)[1] for _ in range(3)]), epoch)


def test_batches_resume_at_the_next_batch_from_their_state():
    split = Split(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    batches = SplitBatches(split, batch_size=3, seed=1)
    for _ in range(4):  # into the second epoch
        next(batches)
    state = batches.state_dict()
    expected = [next(batches)[1] for _ in range(4)]
    resumed = SplitBatches(split, batch_size=3, seed=7)
    resumed.load_state_dict(state)
    assert all(torch.equal(next(resumed)[1], labels) for labels in expected)


def test_unshuffled_batches_read_the_file_order_across_epochs_like_caffe():
    split = Split(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    batches = SplitBatches(split, batch_size=4, seed=1, shuffle=False)
    labels = [next(batches)[1].tolist() for _ in range(4)]
    # nothing dropped: the third batch runs over the end of the first epoch into the second
    assert labels == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5]]
    rank1 = SplitBatches(split, batch_size=2, seed=1, rank=1, world_size=2, shuffle=False)
    assert [next(rank1)[1].tolist() for _ in range(3)] == [[2, 3], [6, 7], [0, 1]]
    state = batches.state_dict()
    resumed = SplitBatches(split, batch_size=4, seed=5, shuffle=False)
    resumed.load_state_dict(state)
    assert next(resumed)[1].tolist() == next(batches)[1].tolist() == [6, 7, 8, 9]


def test_random_shift_moves_each_image_by_its_own_offset_within_the_bound():
    images = torch.rand(64, 1, 6, 6)
    images[:, :, 0, :] = images[:, :, -1, :] = images[:, :, :, 0] = images[:, :, :, -1] = 0.0  # background border
    shifted = random_shift(images, 1, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    offsets = []
    for image, moved in zip(padded, shifted):
        found = [(dy, dx) for dy in range(3) for dx in range(3) if torch.equal(image[:, dy:dy + 6, dx:dx + 6], moved)]
        assert found, "an image moved by more than one pixel, or was changed otherwise"
        offsets.append(found[0])
    assert len(set(offsets)) == 9  # all nine offsets of 64 draws, not one offset for the whole batch


def test_shifted_batches_resume_with_the_same_shifts():
    split = Split(torch.rand(10, 1, 5, 5), torch.arange(10))
    batches = SplitBatches(split, batch_size=3, seed=1, max_shift=2)
    next(batches)
    state = batches.state_dict()
    expected = [next(batches)[0] for _ in range(4)]
    resumed = SplitBatches(split, batch_size=3, seed=7, max_shift=2)
    resumed.load_state_dict(state)
    assert all(torch.equal(next(resumed)[0], images) for images in expected)
    plain, shifted = SplitBatches(split, batch_size=3, seed=1), SplitBatches(split, batch_size=3, seed=1, max_shift=2)
    assert not torch.equal(next(plain)[0], next(shifted)[0])
