import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared real data (MNIST/raw): $DNS_DATA, else ../shared/data beside the repository."""
    root = Path(os.environ.get("DNS_DATA", REPO.parent / "shared" / "data")).resolve()
    if not (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists():
        pytest.fail(f"real MNIST not found under {root}: set DNS_DATA to the folder holding MNIST/raw")
    return root


def dns_train_argv(*args: str) -> list[str]:
    """The installed `dns-train` (beside this interpreter, else on PATH) with `args`."""
    exe = Path(sys.executable).with_name("dns-train")
    return [str(exe) if exe.exists() else "dns-train", *args]


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
