"""ImageNet-layout data on a tiny ImageFolder of real JPEG files, and the top-k errors."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from dns.config import ConfigError, validate
from dns.evaluate import evaluate_batches, topk_errors
from dns.imagenet import ImageFolderBatches, check_image_folder, eval_batches
from dns.models import get_model

from conftest import CLASSES, composed, dns_train_argv


def labels_of(batches, n):
    return [next(batches)[1].tolist() for _ in range(n)]


def remove_val(root):
    shutil.rmtree(root / "val")


def empty_train(root):
    for folder in (root / "train").iterdir():
        shutil.rmtree(folder)


def flatten_val(root):  # ILSVRC-2012's val as downloaded: 50,000 images in one folder
    for image in (root / "val").glob("*/*.JPEG"):
        image.rename(root / "val" / image.name)
    for name in CLASSES:
        (root / "val" / name).rmdir()


def rename_a_val_class(root):
    (root / "val" / CLASSES[0]).rename(root / "val" / "n99999999")


@pytest.mark.parametrize("damage, message", [
    (remove_val, r"imagenet/val is missing; set dataset.root"),
    (empty_train, r"imagenet/train is empty; put each class's images in"),
    (flatten_val, r"imagenet/val has no class folders; sort its images into"),
    (rename_a_val_class, r"class folders of .*train and .*val differ \(only in train: n01440764; only in val: n99999999\)"),
])
def test_a_bad_layout_is_one_line_naming_the_fix(image_folder, damage, message):
    check_image_folder(image_folder)  # the good layout passes
    damage(image_folder)
    with pytest.raises(FileNotFoundError, match=message) as error:
        check_image_folder(image_folder)
    assert "\n" not in str(error.value)


def test_training_batches_are_normalized_227_crops(image_folder):
    images, labels = next(ImageFolderBatches(image_folder / "train", batch_size=5, seed=0, workers=0))
    assert images.shape == (5, 3, 227, 227) and images.dtype == torch.float32 and labels.shape == (5,)
    assert images.min() < -1 and images.max() > 1 and abs(images.mean()) < 0.5  # (x - mean) / std, not [0, 1]
    assert set(labels.tolist()) <= {0, 1, 2}


def test_the_order_repeats_for_a_seed_and_changes_each_epoch(image_folder):
    batches = ImageFolderBatches(image_folder / "train", batch_size=4, seed=3, workers=0)
    first, second = batches.epoch_samples(0), batches.epoch_samples(1)
    assert sorted(i for i, _ in first) == list(range(12)) and [i for i, _ in first] != [i for i, _ in second]
    assert ImageFolderBatches(image_folder / "train", batch_size=4, seed=3, workers=0).epoch_samples(0) == first
    assert labels_of(batches, 3) == [[batches.samples.folder.targets[i] for i, _ in first[k:k + 4]]
                                     for k in (0, 4, 8)]


def test_two_ranks_get_disjoint_equal_shares(image_folder):
    (image_folder / "train" / CLASSES[0] / f"{CLASSES[0]}_0.JPEG").unlink()  # 11 images: one is left over
    shares = [{i for i, _ in ImageFolderBatches(image_folder / "train", batch_size=2, seed=0, workers=0,
                                                rank=rank, world_size=2).epoch_samples(0)} for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 5 and not shares[0] & shares[1]


def test_a_resumed_loader_continues_with_the_same_batch(image_folder):
    batches = ImageFolderBatches(image_folder / "train", batch_size=4, seed=1, workers=0)
    for _ in range(2):
        next(batches)
    state = batches.state_dict()
    expected = [next(batches) for _ in range(3)]  # the rest of epoch 0 and the start of epoch 1
    resumed = ImageFolderBatches(image_folder / "train", batch_size=4, seed=1, workers=0)
    resumed.load_state_dict(state)
    assert state == {"epoch": 0, "position": 2}
    for images, labels in expected:
        again = next(resumed)
        assert torch.equal(again[1], labels) and torch.equal(again[0], images)  # same crops and flips


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # on a machine of one or two cores
def test_workers_give_the_same_batches_and_leave_the_global_rng_alone(image_folder):
    torch.manual_seed(5)
    before = torch.get_rng_state()
    alone = ImageFolderBatches(image_folder / "train", batch_size=3, seed=2, workers=0)
    expected = [next(alone) for _ in range(5)]
    assert torch.equal(torch.get_rng_state(), before)
    pooled = ImageFolderBatches(image_folder / "train", batch_size=3, seed=2, workers=2)
    for images, labels in expected:
        again = next(pooled)
        assert torch.equal(again[1], labels) and torch.equal(again[0], images)


def test_eval_batches_cover_val_once_in_order(image_folder):
    batches = list(eval_batches(image_folder / "val", batch_size=4, workers=0))
    assert [tuple(images.shape) for images, _ in batches] == [(4, 3, 227, 227), (2, 3, 227, 227)]
    assert torch.cat([labels for _, labels in batches]).tolist() == [0, 0, 1, 1, 2, 2]


def test_topk_errors_count_labels_outside_the_top_k():
    logits = torch.tensor([[0.0, 5, 4, 3, 2, 1],   # label 1: top-1 hit
                           [0.0, 5, 4, 3, 2, 1],   # label 4: 4th highest, a top-5 hit
                           [6.0, 5, 4, 3, 2, 1]])  # label 5: 6th highest, a miss in both
    labels = torch.tensor([1, 4, 5])
    assert topk_errors(logits, labels) == {1: 2, 5: 1}
    assert topk_errors(logits, labels, ks=(1, 3, 6, 10)) == {1: 2, 3: 2, 6: 0, 10: 0}  # k clamped to 6 classes


class Echo(torch.nn.Module):
    """A "model" whose logits are its input (and one parameter, for its device)."""

    def __init__(self):
        super().__init__()
        self.zero = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + self.zero


def test_evaluate_batches_counts_top5_misses_among_more_than_5_classes():
    logits = torch.arange(8.0).repeat(6, 1)  # class 7 highest, class 0 lowest, 8 classes
    labels = torch.tensor([7, 3, 2, 1, 0, 6])  # ranks 1, 5, 6, 7, 8, 2: top-1 hit once, top-5 hits three times
    errors = evaluate_batches(Echo(), [(logits[:4], labels[:4]), (logits[4:], labels[4:])])
    assert errors == {"top1": 5 / 6, "top5": 3 / 6}


def test_evaluate_batches_gives_top1_and_top5(image_folder):
    torch.manual_seed(0)
    model = get_model("alexnet", num_classes=3)
    errors = evaluate_batches(model, eval_batches(image_folder / "val", batch_size=2, workers=0))
    assert set(errors) == {"top1", "top5"} and 0 <= errors["top5"] <= errors["top1"] <= 1
    assert errors["top5"] == 0  # 3 classes: every label is in the top 5
    assert model.training  # left as it was


def compose_config(*overrides):
    return composed("model=alexnet", "dataset=imagenet", *overrides)


def test_validate_accepts_an_image_folder_and_names_a_broken_one(image_folder):
    run = validate(compose_config(f"dataset.root={image_folder}", "dataset.batch_size=4"))
    assert (run.dataset.name, run.dataset.num_classes, run.dataset.root) == ("imagenet", 1000, str(image_folder))
    shutil.rmtree(image_folder / "val" / CLASSES[2])
    with pytest.raises(ConfigError, match=f"class folders of {image_folder}/train and {image_folder}/val differ"):
        validate(compose_config(f"dataset.root={image_folder}", "dataset.batch_size=4"))


def test_the_default_root_is_imagenet_under_dns_data(monkeypatch, tmp_path):
    monkeypatch.setenv("DNS_DATA", str(tmp_path))
    with pytest.raises(ConfigError, match=f"{tmp_path}/imagenet/train is missing"):
        validate(compose_config())


def test_alexnet_runs_end_to_end_on_an_image_folder(image_folder, dns_train, tmp_path):
    dataset = [f"dataset.root={image_folder}", "dataset.num_classes=3", "dataset.test_batch_size=3",
               "dataset.workers=0"]
    result = dns_train("model=alexnet", "dataset=imagenet", *dataset, "dataset.batch_size=4", "reference.iters=2",
                       "surgery.phases=[{layers:conv,iters:2},{layers:fc,iters:2}]", "finetune.iters=1",
                       "checkpoint.every=0", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert (report["status"], report["model"], report["dataset"]) == ("completed", "alexnet", "imagenet")
    names = [layer["name"] for layer in report["layers"]]
    assert names == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert report["layers"][-1]["params"] == 4096 * 3 + 3  # fc8 as wide as the class folders
    test = report["test"]
    assert test["final_top5_error"] == test["reference_top5_error"] == 0  # 3 classes: always in the top 5
    assert test["final_error"] in {k / 6 for k in range(7)}  # 6 validation images
    conv, fc = report["phases"]
    assert conv["remaining_pct"]["conv1"] < 100 and conv["remaining_pct"]["fc6"] == 100
    assert fc["remaining_pct"]["fc6"] < 100 and fc["remaining_pct"]["conv1"] == conv["remaining_pct"]["conv1"]
    assert "Top-5 error" in (run / "report.md").read_text() and (run / "plots" / "remaining.png").is_file()

    dns_eval = str(Path(dns_train_argv()[0]).with_name("dns-eval"))
    evaluated = subprocess.run([dns_eval, str(run / "checkpoints" / "final.pt"), "dataset=imagenet", *dataset, "--json"],
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads(evaluated.stdout)["test"]
    assert (again["final_error"], again["final_top5_error"]) == (test["final_error"], test["final_top5_error"])

    dns_report = str(Path(dns_train_argv()[0]).with_name("dns-report"))
    tables = subprocess.run([dns_report, str(run)], capture_output=True, text=True, timeout=600)
    assert tables.returncode == 0, tables.stderr
    assert "| AlexNet | dns | paper (Guo et al. 2016) | 43.42 % | 43.09 % | −0.33 | 19.99 % | 60,965,224 |" in tables.stdout
    change = f"{100 * test['error_change']:+.2f}".replace("-", "−")
    assert (f"| AlexNet | dns | run | {100 * test['reference_error']:.2f} % | {100 * test['final_error']:.2f} % | {change} "
            f"| 0.00 % |" in tables.stdout)


def test_an_image_that_does_not_decode_fails_the_run_with_one_line(image_folder, dns_train, tmp_path):
    broken = image_folder / "train" / CLASSES[1] / "broken.JPEG"
    broken.write_bytes(b"\xff\xd8 not a JPEG after all")
    result = dns_train("model=alexnet", "dataset=imagenet", f"dataset.root={image_folder}", "dataset.num_classes=3",
                       "dataset.batch_size=13", "dataset.workers=1", "reference.iters=1", "surgery.iters=0",
                       "finetune.iters=0", "hydra.run.dir=run")  # 13: every training image, in one batch
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"dns-train: failed: {broken} is not a readable image (UnidentifiedImageError): remove or replace it "
        f"(traceback in {tmp_path / 'run' / 'train.log'})"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "failed" and f"{broken} is not a readable image" in report["error"]
