"""The compact .dns format: round trips, edge cases, damaged files, sizes."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dns
from dns.evaluate import restore
from dns.export import decode, encode, read, save, to_bytes
from dns.masks import mask_state_dict, plain_state_dict
from dns.models import get_model, input_shape, list_models
from dns.surgeon import Surgeon


def test_gap_codes_bridge_long_gaps_with_one_byte_fillers():
    flat = torch.zeros(1000)
    flat[[3, 700, 999]] = torch.tensor([1.5, -2.0, 0.25])
    codes, values = encode(flat)
    # 3 zeros, entry; 696 zeros = 255 + 255 + 186, entry; 298 zeros = 255 + 43, entry
    assert codes.tolist() == [3, 255, 255, 186, 255, 43] and values.tolist() == [1.5, -2.0, 0.25]
    assert torch.equal(decode(codes, values, 1000), flat)


@pytest.mark.parametrize("flat", [torch.zeros(300), torch.ones(5), torch.tensor([0.0] * 255 + [7.0]),
                                  torch.tensor([0.0] * 510 + [7.0] + [0.0] * 3)], ids=["zeros", "dense", "255", "510"])
def test_edge_cases_round_trip(flat):
    codes, values = encode(flat)
    assert torch.equal(decode(codes, values, len(flat)), flat)


EXTRA_ARGS = {"torchvision": {"arch": "resnet18"}}  # a builder of many architectures: one of them


def masked_checkpoint(name: str, density: float, seed: int) -> dict:
    """A model with random masks of the given density, as dns-train would save it."""
    torch.manual_seed(seed)
    args = {"num_classes": 10, **EXTRA_ARGS.get(name, {})}
    model = get_model(name, **args)
    Surgeon(model, layers=[])
    for mask in (b for n, b in model.named_buffers() if n.endswith("_mask")):
        mask.copy_((torch.rand(mask.shape) < density).float())
    return {"model": name, "num_classes": 10, "model_args": args, "state_dict": plain_state_dict(model),
            "masks": mask_state_dict(model)}


def round_trip_cases() -> list[tuple[str, float]]:
    """Every model at three densities; one over a million parameters (AlexNet) only at the sparsest, as
    encoding its 30M entries at density 0.5 takes seconds on a CPU and tests nothing the LeNets do not."""
    cases = []
    for name in list_models():
        with torch.device("meta"):
            params = sum(p.numel() for p in get_model(name, **EXTRA_ARGS.get(name, {})).parameters())
        cases += [(name, density) for density in [0.5, 0.02, 0.001] if params < 1e6 or density == 0.001]
    return cases


@pytest.mark.parametrize("name, density", round_trip_cases())
def test_round_trip_gives_identical_predictions(tmp_path, name, density):
    checkpoint = masked_checkpoint(name, density, seed=int(density * 1000))
    save(checkpoint, tmp_path / "m.dns")
    plain = dns.load(tmp_path / "m.dns")
    assert all(type(module).__module__.startswith(("torch.nn", "dns.models", "torchvision.models"))
               for module in plain.modules())
    assert not any(key.endswith(("_orig", "_mask")) for key in plain.state_dict())  # ordinary modules
    masked, _ = restore(checkpoint)
    x = torch.rand(2, *input_shape(name))
    assert torch.equal(plain(x), masked.eval()(x))  # bitwise, float32 values


def test_an_all_zero_layer_survives_the_round_trip(tmp_path):
    checkpoint = masked_checkpoint("lenet5", 0.1, seed=1)
    checkpoint["masks"]["fc2.weight"][:] = False
    checkpoint["masks"]["fc2.bias"][:] = False
    save(checkpoint, tmp_path / "m.dns")
    _, tensors = read((tmp_path / "m.dns").read_bytes())
    assert tensors["fc2.weight"].abs().sum() == 0 and tensors["fc1.weight"].abs().sum() > 0


def test_float16_values_are_rounded_to_half_precision():
    checkpoint = masked_checkpoint("lenet300", 0.05, seed=2)
    _, tensors = read(to_bytes(checkpoint, "float16"))
    expected = (checkpoint["state_dict"]["fc1.weight"] * checkpoint["masks"]["fc1.weight"]).half().float()
    assert torch.equal(tensors["fc1.weight"], expected)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-10], "damaged or truncated"),
    (lambda b: b[:40], "damaged or truncated"),
    (lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:], "damaged or truncated"),
    (lambda b: b"PK\x03\x04" + b[4:], "not a .dns file"),
])
def test_damaged_files_are_clear_errors(damage, message):
    data = to_bytes(masked_checkpoint("lenet300", 0.05, seed=3))
    with pytest.raises(ValueError, match=message):
        read(damage(data))


def test_the_released_models_shrink_beyond_deep_compression(data_root, tmp_path):
    from dns.caffe import read_net, to_checkpoint

    for net, folder, dense_bytes, bar in (("lenet5", "lenet5", 431080 * 4, 39), ("lenet300", "lenet300100", 266610 * 4, 40)):
        layers = read_net((data_root / "dns-caffe" / folder / f"caffe_{folder}_sparse.caffemodel").read_bytes())[1]
        size = len(to_bytes(to_checkpoint(layers, net, "test")))
        assert dense_bytes / size > bar  # Deep Compression: 39x (LeNet-5), 40x (LeNet-300-100)


def test_dns_export_writes_both_forms(tmp_path):
    checkpoint = masked_checkpoint("lenet300", 0.02, seed=4)
    from dns.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "c.pt", **checkpoint)
    exe = Path(sys.executable).with_name("dns-export")
    command = str(exe) if exe.exists() else "dns-export"
    run = subprocess.run([command, str(tmp_path / "c.pt"), "--out", str(tmp_path / "m.dns")], capture_output=True, text=True)
    assert run.returncode == 0 and "smaller than the dense float32 weights" in run.stdout
    run = subprocess.run([command, str(tmp_path / "c.pt"), "--out", str(tmp_path / "sd.pt"), "--state-dict"],
                         capture_output=True, text=True)
    assert run.returncode == 0
    fresh = get_model("lenet300")
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt"))  # the unmodified model takes it
    assert torch.equal(fresh(torch.ones(1, 1, 28, 28)), dns.load(tmp_path / "m.dns")(torch.ones(1, 1, 28, 28)))


def test_dns_eval_reads_an_exported_file(data_root, tmp_path):
    import json

    from dns.caffe import read_net, to_checkpoint

    layers = read_net((data_root / "dns-caffe" / "lenet300100" / "caffe_lenet300100_sparse.caffemodel").read_bytes())[1]
    save(to_checkpoint(layers, "lenet300", "test"), tmp_path / "m.dns")
    exe = Path(sys.executable).with_name("dns-eval")
    run = subprocess.run([str(exe) if exe.exists() else "dns-eval", str(tmp_path / "m.dns"), "--json",
                          f"dataset.root={data_root}"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["test"]["final_error"] == 0.0199 and report["total"]["remaining"] == 4988
    assert report["bytes"]["dns_float32"] == (tmp_path / "m.dns").stat().st_size


def test_dns_export_never_writes_over_what_it_reads_or_a_file_not_its_own(tmp_path):
    from dns.checkpoint import save_checkpoint

    checkpoint = masked_checkpoint("lenet300", 0.02, seed=4)
    save_checkpoint(tmp_path / "c.pt", **checkpoint)
    (tmp_path / "notes.txt").write_text("mine")
    exe = Path(sys.executable).with_name("dns-export")
    command = str(exe) if exe.exists() else "dns-export"

    def export(*args):
        return subprocess.run([command, *map(str, args)], capture_output=True, text=True)

    def files():
        return {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    before = files()
    for args, message in [((tmp_path / "c.pt", "--out", tmp_path / "c.pt"), "is the input file"),
                          ((tmp_path / "c.pt", "--out", tmp_path / "c.pt", "--force"), "is the input file"),
                          ((tmp_path / "c.pt", "--out", tmp_path / "notes.txt"), "exists and is not a file dns-export writes"),
                          ((tmp_path / "c.pt", "--out", tmp_path / "notes.txt", "--state-dict"), "--force to overwrite"),
                          ((tmp_path / "c.pt", "--out", tmp_path), "is a directory")]:
        run = export(*args)
        assert run.returncode == 2 and run.stderr.count("\n") == 1 and message in run.stderr, run.stderr
        assert files() == before  # byte for byte
    assert export(tmp_path / "c.pt", "--out", tmp_path / "m.dns").returncode == 0
    assert export(tmp_path / "c.pt", "--out", tmp_path / "m.dns", "--float16").returncode == 0  # its own file: again
    assert export(tmp_path / "c.pt", "--out", tmp_path / "notes.txt", "--force").returncode == 0
    assert dns.load(tmp_path / "notes.txt") is not None


def test_dns_export_refuses_a_checkpoint_that_does_not_fit_its_model(tmp_path):
    from dns.checkpoint import save_checkpoint

    checkpoint = masked_checkpoint("lenet300", 0.02, seed=4)
    del checkpoint["state_dict"]["fc2.bias"]
    save_checkpoint(tmp_path / "c.pt", **checkpoint)
    exe = Path(sys.executable).with_name("dns-export")
    run = subprocess.run([str(exe) if exe.exists() else "dns-export", str(tmp_path / "c.pt"), "--out",
                          str(tmp_path / "m.dns")], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "1 missing (fc2.bias)" in run.stderr and not (tmp_path / "m.dns").exists()
