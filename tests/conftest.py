import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared real data (MNIST/raw): $DNS_DATA, else ../shared/data beside the repository."""
    root = Path(os.environ.get("DNS_DATA", REPO.parent / "shared" / "data")).resolve()
    if not (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists():
        pytest.fail(f"real MNIST not found under {root}: set DNS_DATA to the folder holding MNIST/raw")
    return root


def console_argv(program: str, *args: str) -> list[str]:
    """The installed console script `program` (beside this interpreter, else on PATH) with `args`."""
    exe = Path(sys.executable).with_name(program)
    return [str(exe) if exe.exists() else program, *args]


def dns_train_argv(*args: str) -> list[str]:
    return console_argv("dns-train", *args)


CLASSES = ("n01440764", "n01443537", "n01484850")


@pytest.fixture
def image_folder(tmp_path):
    """root/{train,val}/<class>/*.JPEG: 3 classes of 4 training and 2 validation 64×48 noise images."""
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 4), ("val", 2)):
        for name in CLASSES:
            folder = tmp_path / "imagenet" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (48, 64, 3), generator=gen, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{name}_{i}.JPEG")
    return tmp_path / "imagenet"


@pytest.fixture
def dns_train(data_root, tmp_path):
    """Run the installed `dns-train` in a fresh working directory; returns the CompletedProcess."""
    def run(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess:
        env = {**os.environ, "DNS_DATA": str(data_root)}
        return subprocess.run(dns_train_argv(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return run


@pytest.fixture
def start_dns_train(data_root, tmp_path):
    """Start the installed `dns-train` in the background (to signal it); returns the Popen."""
    def start(*args: str, cwd: Path = tmp_path) -> subprocess.Popen:
        env = {**os.environ, "DNS_DATA": str(data_root)}
        return subprocess.Popen(dns_train_argv(*args), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    return start


def completed_run(folder: Path, data_root: Path, *args: str) -> Path:
    """Run the installed `dns-train` with `args` to its end in `folder`; returns the run directory."""
    result = subprocess.run(dns_train_argv(*args, "hydra.run.dir=run"), cwd=folder, capture_output=True, text=True,
                            env={**os.environ, "DNS_DATA": str(data_root)}, timeout=600)
    assert result.returncode == 0, result.stderr
    return folder / "run"


def outcome(run_dir):
    """What must not depend on an interruption: final weights and masks, the report's numbers, the history."""
    final = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)
    report = json.loads((run_dir / "report.json").read_text())
    return (final["state_dict"], final["masks"], final["layers"], report["status"], report["layers"], report["test"],
            report["total"], (run_dir / "history.csv").read_text())


def assert_identical(a, b):
    for x, y in zip(a, b):
        if isinstance(x, dict) and x and isinstance(next(iter(x.values())), torch.Tensor):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)  # bitwise
        else:
            assert x == y


def wait_for_surgery_checkpoint(process, run_dir, iteration: int) -> None:
    """Block until the run has checkpointed surgery iteration >= `iteration` (it goes on running meanwhile)."""
    latest = run_dir / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        if latest.is_file():
            resume = torch.load(latest, weights_only=True)["resume"]
            if resume["stage"] == "surgery" and resume["iteration"] >= iteration:
                return
        time.sleep(0.05)
    pytest.fail("the run never reached surgery")


def composed(*overrides: str):
    """dns-train's configuration for `overrides`, composed as dns-train does (its schemas registered)."""
    from hydra import compose, initialize_config_module

    from dns.config import register_configs

    register_configs()
    with initialize_config_module(config_module="dns.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
