import dataclasses
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

import dns.cifar
from dns.cifar import CIFAR, crop_flip, normalize, random_crop_flip
from dns.config import DatasetConfig, register_configs
from dns.data import Split, SplitBatches, augmentation, load_split, prepare_dataset
from dns.evaluate import evaluate

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def write_pickle(path, entry: dict, protocol: int = 2):
    """A file like the official ones: a pickled dict with bytes keys, the images a uint8 array [N, 3072]."""
    path.write_bytes(pickle.dumps(entry, protocol=protocol))


def random_rows(n: int, gen: torch.Generator) -> np.ndarray:
    return torch.randint(0, 256, (n, 3072), generator=gen, dtype=torch.uint8).numpy()


def fake_cifar10(root, n_train=6, n_test=8, protocol=2):
    """cifar-10-batches-py/ with five training batches of n_train images and a test batch of n_test.

    Image 0 of data_batch_1 is black but for the blue pixel at row 5, column 7 (value 200); the labels
    of training batch k are (k + i) % 10, those of the test batch 9 - i % 10.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for k in range(1, 6):
        rows = random_rows(n_train, gen)
        if k == 1:
            rows[0] = 0
            rows[0, 2 * 1024 + 5 * 32 + 7] = 200  # planes R, G, B of 32x32, each row-major
        write_pickle(folder / f"data_batch_{k}", {b"batch_label": b"training batch", b"data": rows,
                                                  b"labels": [(k + i) % 10 for i in range(n_train)],
                                                  b"filenames": [b"x.png"] * n_train}, protocol)
    write_pickle(folder / "test_batch", {b"data": random_rows(n_test, gen),
                                         b"labels": [9 - i % 10 for i in range(n_test)]}, protocol)
    write_pickle(folder / "batches.meta", {b"label_names": [b"airplane"] * 10, b"num_vis": 3072}, protocol)
    return folder


def fake_cifar100(root, n_train=12, n_test=5):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(1)
    for name, n in (("train", n_train), ("test", n_test)):
        write_pickle(folder / name, {b"data": random_rows(n, gen), b"fine_labels": [99 - 7 * i for i in range(n)],
                                     b"coarse_labels": [i % 20 for i in range(n)]})
    write_pickle(folder / "meta", {b"fine_label_names": [b"apple"] * 100, b"coarse_label_names": [b"fish"] * 20})
    return folder


def cifar10(root, **kwargs) -> DatasetConfig:
    return DatasetConfig(name="cifar10", root=str(root), download=False, **kwargs)


@pytest.mark.parametrize("protocol", [2, 5, "numpy 1"])
def test_cifar10_loads_as_uint8_tensors_in_file_order(tmp_path, protocol):
    fake_cifar10(tmp_path, protocol=5 if protocol == 5 else 2)
    if protocol == "numpy 1":  # the official files name numpy.core, which numpy 2 renamed numpy._core
        for path in (tmp_path / "cifar-10-batches-py").iterdir():
            path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    train, test = load_split(cifar10(tmp_path), train=True), load_split(cifar10(tmp_path), train=False)
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (8, 3, 32, 32)
    assert train.images.dtype == test.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == [(k + i) % 10 for k in range(1, 6) for i in range(6)]
    assert test.labels.tolist() == [9, 8, 7, 6, 5, 4, 3, 2]
    assert train.images[0].nonzero().tolist() == [[2, 5, 7]] and train.images[0, 2, 5, 7] == 200
    assert (train.mean, train.std) == (CIFAR10_MEAN, CIFAR10_STD)


def test_cifar100_reads_the_fine_labels_and_its_own_statistics(tmp_path):
    fake_cifar100(tmp_path)
    cfg = DatasetConfig(name="cifar100", root=str(tmp_path), download=False, num_classes=100)
    train, test = load_split(cfg, train=True), load_split(cfg, train=False)
    assert train.images.shape == (12, 3, 32, 32) and test.images.shape == (5, 3, 32, 32)
    assert train.labels.tolist() == [99 - 7 * i for i in range(12)]
    assert (train.mean, train.std) == (CIFAR100_MEAN, CIFAR100_STD)
    x = train.inputs(train.images[:1])
    expected = (train.images[:1].double() / 255 - torch.tensor(CIFAR100_MEAN).double().view(1, 3, 1, 1)) \
        / torch.tensor(CIFAR100_STD).double().view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and torch.allclose(x.double(), expected, atol=1e-6)


def test_normalization_takes_pixels_over_255_to_zero_mean_unit_std_per_channel():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    x = normalize(images, CIFAR10_MEAN, CIFAR10_STD)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 2, 2)
    for c in range(3):
        assert x[0, c, 0, 0].item() == pytest.approx(-CIFAR10_MEAN[c] / CIFAR10_STD[c], abs=1e-6)
        assert x[1, c, 1, 1].item() == pytest.approx((1 - CIFAR10_MEAN[c]) / CIFAR10_STD[c], abs=1e-6)
    assert normalize(torch.full((1, 3, 1, 1), 125, dtype=torch.uint8), CIFAR10_MEAN, CIFAR10_STD).flatten() \
        .tolist() == pytest.approx([(125 / 255 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD)], abs=1e-6)


def test_mnist_style_splits_give_their_images_unchanged():
    split = Split(torch.rand(4, 1, 28, 28), torch.arange(4))
    assert split.inputs(split.images) is split.images


def reference_crop_flip(image, top, left, flip, padding):
    """One image the slow, obvious way: zero-pad, slice the window, mirror."""
    h, w = image.shape[1:]
    window = F.pad(image, (padding,) * 4)[:, top:top + h, left:left + w]
    return window.flip(-1) if flip else window


def test_crop_flip_matches_pad_slice_and_mirror_per_image():
    gen = torch.Generator().manual_seed(0)
    padding, offsets = 2, [(t, l) for t in range(5) for l in range(5)]
    images = torch.randint(1, 256, (2 * len(offsets), 3, 6, 7), generator=gen, dtype=torch.uint8)
    top = torch.tensor([t for t, _ in offsets] * 2)
    left = torch.tensor([l for _, l in offsets] * 2)
    flip = torch.arange(len(images)) >= len(offsets)  # every offset without, then with, the mirror
    out = crop_flip(images, top, left, flip, padding)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for n in range(len(images)):
        assert torch.equal(out[n], reference_crop_flip(images[n], top[n], left[n], bool(flip[n]), padding))
    centre = crop_flip(images, torch.full((len(images),), padding), torch.full((len(images),), padding),
                       torch.zeros(len(images), dtype=torch.bool), padding)
    assert torch.equal(centre, images)  # the centred window without mirror: the image itself
    assert out[0, :, :2, :].eq(0).all() and out[0, :, 2:, 2:].ne(0).all()  # top-left window: zeros above, left


def test_random_crops_and_flips_cover_every_offset_each_image_its_own():
    images = torch.randint(1, 256, (1000, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(1))
    candidates = [(t, l, f) for t in range(9) for l in range(9) for f in (False, True)]
    padded = F.pad(images, (4,) * 4)
    windows = torch.stack([padded[:, :, t:t + 8, l:l + 8].flip(-1) if f else padded[:, :, t:t + 8, l:l + 8]
                           for t, l, f in candidates])  # [162, N, 3, 8, 8]
    matches = (windows == out).flatten(2).all(2)  # [162, N]
    assert matches.sum(0).eq(1).all()  # each image is exactly one window of its padded self, perhaps mirrored
    drawn = [candidates[i] for i in matches.int().argmax(0).tolist()]
    assert {(t, l) for t, l, _ in drawn} == {(t, l) for t in range(9) for l in range(9)}
    assert 0.45 < sum(f for _, _, f in drawn) / len(drawn) < 0.55


def test_training_batches_are_augmented_and_normalized_unless_augment_is_false(tmp_path):
    fake_cifar10(tmp_path)
    assert augmentation(cifar10(tmp_path)) is random_crop_flip
    assert augmentation(cifar10(tmp_path, augment=False)) is None
    assert augmentation(DatasetConfig(name="mnist", max_shift=2)) is None  # MNIST-style data: max_shift alone
    train = load_split(cifar10(tmp_path), train=True)
    augmented = SplitBatches(train, 16, seed=3, augment=augmentation(cifar10(tmp_path)))
    plain = SplitBatches(train, 16, seed=3, augment=augmentation(cifar10(tmp_path, augment=False)))
    (x, y), (x_plain, y_plain) = next(augmented), next(plain)
    assert x.dtype == x_plain.dtype == torch.float32 and x.shape == (16, 3, 32, 32)
    assert torch.equal(y, y_plain) and not torch.equal(x, x_plain)  # the same samples, cropped and flipped
    assert torch.allclose(x_plain.mean((0, 2, 3)), normalize(train.images, train.mean, train.std).mean((0, 2, 3)),
                          atol=0.1)
    # without augmentation a batch is exactly the normalized stored images (some batch of them)
    normalized = normalize(train.images, train.mean, train.std)
    assert all(any(torch.equal(image, stored) for stored in normalized) for image in x_plain)


class Recorder(nn.Module):
    """Remembers what it was fed; predicts class 0."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return torch.zeros(len(x), 10).index_fill_(1, torch.tensor([0]), 1.0)


def test_evaluation_feeds_normalized_unaugmented_test_images(tmp_path):
    fake_cifar10(tmp_path)
    test = load_split(cifar10(tmp_path), train=False)
    model = Recorder()
    error = evaluate(model, test, batch_size=3)
    assert error == pytest.approx(1 - (test.labels == 0).float().mean().item())
    fed = torch.cat(model.seen)
    assert fed.dtype == torch.float32 and torch.equal(fed, normalize(test.images, test.mean, test.std))


def test_batches_repeat_by_seed_and_resume_with_the_same_crops(tmp_path):
    fake_cifar10(tmp_path)
    train = load_split(cifar10(tmp_path), train=True)

    def batches(seed):
        return SplitBatches(train, 8, seed=seed, augment=random_crop_flip)

    first, again = batches(1), batches(1)
    assert all(torch.equal(a, b) for _ in range(5) for a, b in zip(next(first), next(again)))
    state = first.state_dict()  # mid second epoch (30 images: 3 batches of 8 an epoch)
    expected = [next(first) for _ in range(4)]
    resumed = batches(99)
    resumed.load_state_dict(state)
    assert all(torch.equal(next(resumed)[0], x) for x, _ in expected)


def break_and_load(tmp_path, name, damage):
    folder = fake_cifar10(tmp_path)
    damage(folder / name)
    with pytest.raises(FileNotFoundError) as e:
        prepare_dataset(cifar10(tmp_path))
    message = str(e.value)
    assert "\n" not in message and str(folder) in message and name in message
    with pytest.raises(FileNotFoundError) as e:  # reading the split checks the same
        load_split(cifar10(tmp_path), train=name != "test_batch")
    assert str(e.value) == message
    return message


def test_a_missing_file_is_named_with_the_fix(tmp_path):
    message = break_and_load(tmp_path, "data_batch_3", lambda path: path.unlink())
    assert message == (f"cifar10 not found: {tmp_path}/cifar-10-batches-py lacks data_batch_3; set DNS_DATA or "
                       f"dataset.root to the folder holding cifar-10-batches-py, or allow dataset.download=true")


def test_a_truncated_pickle_is_named_with_the_fix(tmp_path):
    message = break_and_load(tmp_path, "data_batch_2", lambda path: path.write_bytes(path.read_bytes()[:5000]))
    assert "data_batch_2 is truncated or corrupt" in message and "replace it with the official file" in message


@pytest.mark.parametrize("entry, reason", [
    ({b"data": np.zeros((6, 3071), np.uint8), b"labels": [0] * 6}, r"data is torch.uint8 \[6, 3071\]"),
    ({b"data": np.zeros((6, 3072), np.float32), b"labels": [0] * 6}, r"data is torch.float32"),
    ({b"data": np.zeros((6, 3072), np.uint8), b"labels": [0] * 5}, r"6 images but labels of shape \[5\]"),
    ({b"data": np.zeros((6, 3072), np.uint8), b"labels": [10] * 6}, r"labels outside \[0, 10\)"),
    ({b"data": np.zeros((6, 3072), np.uint8)}, r"no b'labels' entry"),
    ({b"data": "not an array", b"labels": [0] * 6}, r"b'data' holds no array of numbers"),
    ([1, 2, 3], r"holds a list"),
])
def test_arrays_of_the_wrong_shape_are_named_with_the_fix(tmp_path, entry, reason):
    message = break_and_load(tmp_path, "test_batch", lambda path: write_pickle(path, entry))
    assert message.startswith(f"{tmp_path}/cifar-10-batches-py/test_batch is truncated or corrupt (")
    assert re.search(reason, message)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    message = break_and_load(tmp_path, "data_batch_1", lambda path: write_pickle(path, {b"data": Payload()}))
    assert re.search(r"refers to (__builtin__|builtins)\.print", message)


def test_missing_meta_and_the_download_false_message(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        prepare_dataset(cifar10(tmp_path / "nowhere"))
    assert str(e.value) == (
        f"cifar10 not found: {tmp_path}/nowhere/cifar-10-batches-py lacks data_batch_1, data_batch_2, data_batch_3, "
        f"data_batch_4, data_batch_5, test_batch, batches.meta; set DNS_DATA or dataset.root to the folder holding "
        f"cifar-10-batches-py, or allow dataset.download=true")
    fake_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python lacks meta; set DNS_DATA"):
        prepare_dataset(DatasetConfig(name="cifar100", root=str(tmp_path), download=False))


def test_download_is_tried_when_allowed_and_its_failure_is_one_line(tmp_path, monkeypatch):
    calls = []

    class Offline:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            raise RuntimeError("Error downloading cifar-10-python.tar.gz:\nno network")

    class Fetches:
        def __init__(self, root, train, download):
            fake_cifar10(tmp_path)

    cfg = DatasetConfig(name="cifar10", root=str(tmp_path), download=True)
    monkeypatch.setitem(CIFAR, "cifar10", dataclasses.replace(CIFAR["cifar10"], torchvision_class=Offline))
    with pytest.raises(FileNotFoundError) as e:
        prepare_dataset(cfg)
    assert calls == [(str(tmp_path), True, True)]
    assert str(e.value) == (f"cifar10 could not be read from {tmp_path}/cifar-10-batches-py and downloading it failed "
                            f"(Error downloading cifar-10-python.tar.gz: no network); set DNS_DATA or dataset.root "
                            f"to the folder holding cifar-10-batches-py")
    monkeypatch.setitem(CIFAR, "cifar10", dataclasses.replace(CIFAR["cifar10"], torchvision_class=Fetches))
    assert len(load_split(cfg, train=True).labels) == 30  # fetched on the way
    prepare_dataset(cfg)


def test_the_dataset_configs_compose(tmp_path):
    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        for name, classes in (("cifar10", 10), ("cifar100", 100)):
            d = compose(config_name="config", overrides=[f"dataset={name}"]).dataset
            assert (d.name, d.download, d.augment, d.batch_size, d.test_batch_size, d.num_classes) == \
                (name, True, True, 128, 1000, classes)
    assert dns.cifar.IMAGE_SHAPE == (3, 32, 32)
