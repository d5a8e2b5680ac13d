"""The Caffe reader on a message built here, and the authors' four released LeNets."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from dns.caffe import CaffeFormatError, read_net, to_checkpoint
from dns.config import ConfigError, register_configs, validate


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def message(number: int, body: bytes) -> bytes:
    return tag(number, 2) + varint(len(body)) + body


def f32(number: int, value: float) -> bytes:
    return tag(number, 5) + struct.pack("<f", value)


def tiny_net() -> bytes:
    weight = message(7, message(7, tag(1, 2) + varint(2) + varint(2) + varint(3))  # shape {dim: [2, 3]} packed
                     + message(5, struct.pack("<6f", 0.5, 0, -1.5, 0, 2, 0)))  # packed data
    bias = message(7, tag(1, 0) + varint(2) + f32(5, 0.25) + f32(5, 0.0))  # legacy num = 2, unpacked floats
    dns = message(141, f32(1, 1e-4) + f32(2, 1.0) + f32(3, 300.0) + f32(4, 2.5))
    layer = message(1, b"ip") + message(2, b"CInnerProduct") + weight + bias + dns
    data_layer = message(1, b"data") + message(2, b"Data")
    return message(1, b"tiny") + message(100, data_layer) + message(100, layer)


def test_reader_decodes_names_blobs_and_dns_settings():
    name, layers = read_net(tiny_net())
    assert name == "tiny" and [(l.name, l.type) for l in layers] == [("data", "Data"), ("ip", "CInnerProduct")]
    weight, bias = layers[1].blobs
    assert weight.shape == [2, 3] and weight.data.tolist() == [[0.5, 0, -1.5], [0, 2, 0]]
    assert bias.shape == [2, 1, 1, 1] and bias.data.flatten().tolist() == [0.25, 0.0]
    assert layers[1].settings == {"gamma": pytest.approx(1e-4), "power": 1.0, "iter_stop": 300.0, "c_rate": 2.5}


@pytest.mark.parametrize("cut", [3, 20, 40])
def test_truncated_files_are_format_errors(cut):
    with pytest.raises(CaffeFormatError):
        read_net(tiny_net()[:-cut])


def test_anything_else_is_refused():
    with pytest.raises(CaffeFormatError, match="no layers found"):
        read_net(b"\x0a\x03abc")


def caffe_file(data_root: Path, net: str, variant: str) -> Path:
    folder = "lenet5" if net == "lenet5" else "lenet300100"
    return data_root / "dns-caffe" / folder / f"caffe_{folder}_{variant}.caffemodel"


def imported(data_root, net, variant):
    return to_checkpoint(read_net(caffe_file(data_root, net, variant).read_bytes())[1], net, "test")


def test_the_released_sparse_lenet5_keeps_3993_connections_and_its_settings(data_root):
    ckpt = imported(data_root, "lenet5", "sparse")
    kept = {name: int(ckpt["masks"][f"{name}.weight"].sum() + ckpt["masks"][f"{name}.bias"].sum())
            for name in ("conv1", "conv2", "fc1", "fc2")}
    assert kept == {"conv1": 74, "conv2": 779, "fc1": 2923, "fc2": 217}
    assert {n: (s["c"], s["iter_stop"], s["gamma"], s["power"]) for n, s in ckpt["layers"].items()} == {
        "conv1": (2.0, 14000, 1e-4, 1.0), "conv2": (3.0, 14000, 1e-4, 1.0),
        "fc1": (4.0, 14000, 1e-4, 1.0), "fc2": (2.5, 14000, 1e-4, 1.0)}
    assert ckpt["source"]["caffe_layers"] == {"conv1": "conv1", "conv2": "conv2", "fc1": "ip1", "fc2": "ip2"}


def test_a_file_of_another_network_is_a_clear_error(data_root):
    with pytest.raises(CaffeFormatError, match="has 3 layers with weights .* but lenet5 has 4"):
        to_checkpoint(read_net(caffe_file(data_root, "lenet300", "original").read_bytes())[1], "lenet5", "x")


def script(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


@pytest.mark.parametrize("net, variant, errors, remaining", [
    ("lenet5", "original", 91, 431080), ("lenet5", "sparse", 91, 3993),
    ("lenet300", "original", 228, 266610), ("lenet300", "sparse", 199, 4988),
])
def test_imported_models_give_the_papers_errors(data_root, tmp_path, net, variant, errors, remaining):
    out = tmp_path / "model.pt"
    run = subprocess.run([script("dns-import-caffe"), str(caffe_file(data_root, net, variant)), "--model", net,
                          "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([script("dns-eval"), str(out), "--json", f"dataset.root={data_root}"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["test"]["final_error"] == errors / 10000  # Table 1: 0.91 %, 0.91 %, 2.28 %, 1.99 %
    assert report["total"]["remaining"] == remaining
    assert [layer["name"] for layer in report["layers"]][-1] == ("fc2" if net == "lenet5" else "fc3")


def test_import_with_the_wrong_model_is_one_line_exit_2(data_root, tmp_path):
    run = subprocess.run([script("dns-import-caffe"), str(caffe_file(data_root, "lenet5", "sparse")),
                          "--model", "lenet300", "--out", str(tmp_path / "x.pt")], capture_output=True, text=True)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "pick the matching --model" in run.stderr and not (tmp_path / "x.pt").exists()


def test_import_never_writes_over_its_input_or_a_file_not_its_own(data_root, tmp_path):
    import shutil

    source = tmp_path / "net.caffemodel"
    shutil.copy(caffe_file(data_root, "lenet300", "sparse"), source)
    (tmp_path / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for out, message in [(source, "is the input file"), (tmp_path / "notes.txt", "--force to overwrite")]:
        run = subprocess.run([script("dns-import-caffe"), str(source), "--model", "lenet300", "--out", str(out)],
                             capture_output=True, text=True)
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and message in run.stderr
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    for _ in range(2):  # its own checkpoint it writes again
        run = subprocess.run([script("dns-import-caffe"), str(source), "--model", "lenet300", "--out",
                              str(tmp_path / "m.pt")], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr


@pytest.fixture
def sparse_lenet5(data_root, tmp_path) -> Path:
    from dns.checkpoint import save_checkpoint

    path = tmp_path / "lenet5_sparse.pt"
    save_checkpoint(path, **imported(data_root, "lenet5", "sparse"))
    return path


def surgery_with_settings_of(checkpoint, data_root, *overrides):
    register_configs()
    with initialize_config_module(config_module="dns.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"reference.checkpoint={checkpoint}", "reference.surgery_settings=true", f"dataset.root={data_root}",
            *overrides])
    return validate(cfg).surgery


def test_surgery_settings_are_taken_from_the_checkpoint(sparse_lenet5, data_root):
    surgery = surgery_with_settings_of(sparse_lenet5, data_root, "surgery.gamma=1e-3")
    assert surgery.c_per_layer == {"conv1": 2.0, "conv2": 3.0, "fc1": 4.0, "fc2": 2.5}
    assert surgery.iter_stop_per_layer == {"conv1": 14000, "conv2": 14000, "fc1": 14000, "fc2": 14000}
    # the file's power (1) and layers; the gamma given, not the file's 1e-4
    assert (surgery.gamma, surgery.power, surgery.layers) == (1e-3, 1.0, ["conv1", "conv2", "fc1", "fc2"])


def test_what_the_config_sets_wins_over_the_checkpoints_surgery_settings(sparse_lenet5, data_root):
    surgery = surgery_with_settings_of(sparse_lenet5, data_root, "surgery.c_per_layer={fc*:5}",
                                       "surgery.iter_stop_per_layer={conv1:100}", "surgery.layers=[fc1,fc2]")
    assert surgery.c_per_layer == {"conv1": 2.0, "conv2": 3.0, "fc1": 5.0, "fc2": 5.0}
    assert surgery.iter_stop_per_layer == {"conv1": 100, "conv2": 14000, "fc1": 14000, "fc2": 14000}
    assert surgery.layers == ["fc1", "fc2"]
    surgery = surgery_with_settings_of(sparse_lenet5, data_root, "surgery.c=3", "surgery.iter_stop=900")
    assert (surgery.c, surgery.c_per_layer, surgery.iter_stop, surgery.iter_stop_per_layer) == (3.0, {}, 900, {})
    with pytest.raises(ConfigError, match="reference.surgery_settings=true takes one surgery of the checkpoint's "
                                          "layers; surgery.phases sets its own: drop one of the two"):
        surgery_with_settings_of(sparse_lenet5, data_root, "surgery.phases=[{layers:fc,iters:10}]")


def test_a_run_starts_from_an_imported_model_with_its_masks(dns_train, sparse_lenet5, tmp_path):
    result = dns_train(f"reference.checkpoint={sparse_lenet5}", "surgery.iters=0", "finetune.iters=0",
                       "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["test"] == {"reference_error": 0.0091, "final_error": 0.0091, "error_change": 0.0}
    assert report["total"]["remaining"] == 3993 and report["iterations"]["reference"] == 0


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "is not a readable checkpoint"),
    (None, "holds a lenet5 model, not lenet300"),
])
def test_bad_reference_checkpoints_are_refused_before_work(dns_train, sparse_lenet5, tmp_path, content, message):
    path = sparse_lenet5
    if content is not None:
        path = tmp_path / "bad.pt"
        path.write_bytes(content)
    result = dns_train("model=lenet300", f"reference.checkpoint={path}")
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()
