"""Training throughput, dense against surgery, on synthetic input: the script to run when a GPU is lent.

    python scripts/bench_throughput.py                       # ResNet-56 and AlexNet, amp and channels_last on/off
    python scripts/bench_throughput.py --models alexnet --batch 256 --steps 50 --device cpu

For each model (ResNet-56 at 3x32x32, batch 128; AlexNet at 3x227x227, batch 256, unless --batch says otherwise)
and each combination of --amp (bfloat16 autocast) and --channels-last asked for, it times
  dense    the plain model (the reference stage);
  surgery  the masked model whose every layer re-decides its mask at every step (gamma 0: the gate always
           open), the most a surgery step can cost; the paper's gate opens less and less often.
Each is warmed up, then timed over --steps steps (CUDA synchronised); images/s and their ratio are printed, one
row per setting. amp and channels_last are run on CUDA only (dns-train refuses them on CPU).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from torch import nn

from dns.models import get_model, input_shape
from dns.surgeon import Surgeon

BATCH = {"resnet56": 128, "resnet20": 128, "alexnet": 256}


def throughput(model: nn.Module, surgeon: Surgeon | None, shape: tuple[int, int, int], batch: int, steps: int,
               warmup: int, amp: bool, channels_last: bool, device: torch.device) -> float:
    """Training images per second of `model` (with `surgeon` operating at every step)."""
    images = torch.randn(batch, *shape, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    if channels_last:
        model, images = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)

    def run(count: int) -> None:
        for i in range(count):
            if surgeon is not None:
                surgeon.step(i)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = nn.functional.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(warmup)
    start = time.perf_counter()
    run(steps)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["resnet56", "alexnet"])
    parser.add_argument("--batch", type=int, default=None, help="default: 128 for the ResNets, 256 for AlexNet")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--amp", choices=["off", "on", "both"], default="both", help="bfloat16 autocast (CUDA)")
    parser.add_argument("--channels-last", choices=["off", "on", "both"], default="both", help="NHWC (CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    choices = {"off": [False], "on": [True], "both": [False, True]}
    settings = list(itertools.product(choices[args.amp], choices[args.channels_last]))
    if device.type != "cuda":
        settings = [(False, False)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.steps} steps after {args.warmup}, torch {torch.__version__}, {name}")
    print(f"{'model':<10}{'batch':>6}{'amp':>6}{'NHWC':>6}{'dense img/s':>14}{'surgery img/s':>15}{'dense/surgery':>15}")
    for model_name, (amp, channels_last) in itertools.product(args.models, settings):
        torch.manual_seed(0)
        batch = args.batch or BATCH.get(model_name, 128)
        shape = input_shape(model_name)
        timing = dict(shape=shape, batch=batch, steps=args.steps, warmup=args.warmup, amp=amp,
                      channels_last=channels_last, device=device)
        dense = throughput(get_model(model_name).to(device), None, **timing)
        model = get_model(model_name).to(device)
        surgery = throughput(model, Surgeon(model, c=1.0, gamma=0.0), **timing)
        print(f"{model_name:<10}{batch:>6}{'on' if amp else 'off':>6}{'on' if channels_last else 'off':>6}"
              f"{dense:>14,.0f}{surgery:>15,.0f}{dense / surgery:>15.3f}", flush=True)


if __name__ == "__main__":
    main()
