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


@pytest.fixture
def dns_train(data_root, tmp_path):
    """Run the installed `dns-train` in a fresh working directory; returns the CompletedProcess."""
    def run(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess:
        env = {**os.environ, "DNS_DATA": str(data_root)}
        exe = Path(sys.executable).with_name("dns-train")
        command = [str(exe) if exe.exists() else "dns-train", *args]
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return run
