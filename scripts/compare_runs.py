"""Exit 0 if two run directories ended identically: final weights and masks bitwise, report numbers, history.

    python scripts/compare_runs.py RUN_A RUN_B
"""

import json
import sys
from pathlib import Path

import torch


def differences(a: Path, b: Path) -> list[str]:
    found = []
    fa, fb = (torch.load(p / "checkpoints" / "final.pt", weights_only=True) for p in (a, b))
    for key in ("state_dict", "masks"):
        for name in fa[key]:
            if not torch.equal(fa[key][name], fb[key].get(name, torch.empty(0))):
                found.append(f"{key} {name}")
    if fa["layers"] != fb["layers"]:
        found.append("per-layer surgery settings")
    ra, rb = (json.loads((p / "report.json").read_text()) for p in (a, b))
    for key in ("status", "layers", "total", "test", "bytes", "warnings"):
        if ra.get(key) != rb.get(key):
            found.append(f"report {key}")
    if (a / "history.csv").read_text() != (b / "history.csv").read_text():
        found.append("history.csv")
    return found


if __name__ == "__main__":
    diff = differences(Path(sys.argv[1]), Path(sys.argv[2]))
    print("identical" if not diff else "DIFFERENT: " + ", ".join(diff))
    sys.exit(1 if diff else 0)
