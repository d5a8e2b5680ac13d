"""AlexNet training throughput, dense against surgery, on synthetic input (issue 7's GPU measurement).

    python scripts/bench_alexnet.py [--device cuda] [--batch 256] [--steps 50] [--amp] [--channels-last]

  dense    the plain model (the reference stage);
  surgery  the masked model whose every layer re-decides its mask at every step (gamma 0: the gate always
           open), the most a surgery step can cost; the paper's gate opens less and less often.
Each is warmed up, then timed over --steps steps (CUDA synchronised); images/s and the ratio are printed.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from dns.models import get_model
from dns.surgeon import Surgeon


def throughput(model: nn.Module, surgeon: Surgeon | None, args, device: torch.device) -> float:
    """Training images per second of `model` (with `surgeon` operating at every step)."""
    images = torch.randn(args.batch, 3, 227, 227, device=device)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    if args.channels_last:
        model, images = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)

    def steps(count: int) -> None:
        for i in range(count):
            if surgeon is not None:
                surgeon.step(i)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = nn.functional.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    steps(args.warmup)
    start = time.perf_counter()
    steps(args.steps)
    return args.batch * args.steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"alexnet, batch {args.batch}, {args.steps} steps, amp {args.amp}, channels_last {args.channels_last}, "
          f"torch {torch.__version__}, {name}")
    dense = throughput(get_model("alexnet").to(device), None, args, device)
    model = get_model("alexnet").to(device)
    surgeon = Surgeon(model, c=1.0, gamma=0.0)
    surgery = throughput(model, surgeon, args, device)
    print(f"dense {dense:,.0f} images/s, surgery (every mask updated every step) {surgery:,.0f} images/s, "
          f"ratio {dense / surgery:.3f}")


if __name__ == "__main__":
    main()
