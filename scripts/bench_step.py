"""Cost of a surgery training step against a dense one, measured side by side in one process.

    DNS_DATA=../shared/data python scripts/bench_step.py [--steps 300] [--repeats 15] [--threads N]
        [--models lenet5 lenet300 resnet20] [--data auto|mnist|random] [--reference-steps 2000]
    python scripts/bench_step.py --models resnet20 --steps 20 --repeats 7     # batch 128: about 0.35 s a step

For each model it takes its recipe (conf/experiment/paper_<model>.yaml for the LeNets, since 2026-12-04 the
paper's setting with Caffe's solver, before it torch's SGD; <model>_cifar10.yaml for
the CIFAR ResNets: its optimizer, batch size, surgery learning rate and weight decay, per-layer c, exclusions,
iter_stop, gamma and power) and times the mean training step (forward, backward, optimizer update, the
recipe's batch: 64 for the LeNets, 128 for the ResNets) of
  dense   the plain model, no masks (the reference stage);
  masked  the masked model with the masks of the recipe's first surgery, frozen (fine-tuning): masking alone;
  gated   the masked model with the surgeon under the recipe's gate: iteration i runs over the surgery stage
          (0 .. iter_stop) so each layer updates its mask with probability sigma(i);
  worst   the masked model updating every layer's mask at every step (gamma = 0).
All four start from one dense reference. With --data mnist (auto's choice for the LeNets; MNIST from $DNS_DATA) it is trained
for --reference-steps steps first and every step takes a real batch, so that weights and masks are those of
a real run's early surgery (lenet300's fc1 keeps 0.04 % in `masked`, 0.5 % in `gated` by the last round; a
whole surgery stage splices it back to 1.5 %). --data random takes random images and the untrained model,
as this script did before 2026-12-03; the recipe's thresholds then prune fc1 and fc2 to nothing. There is no
CIFAR here, so auto takes random images for the ResNets (their untrained weights under the recipe's c keep
about 30 % of each layer: the mask work is that of a real run, the weights are not).
The four are interleaved over --repeats rounds, so that drifts of the machine hit all four alike; every round
of `gated` draws the same gates. Each one's ratio to dense is printed for the median round and for the
fastest round: on a shared machine other processes only ever add time, so the fastest rounds show the cost
of the work itself (as `timeit` advises), the median what a run sees.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn

from dns.cli import CONFIG_MODULE
from dns.config import RunConfig, model_args, sample_shape
from dns.data import SplitBatches, load_split
from dns.models import get_model, layer_kind, prunable_layers
from dns.optim import build_optimizer
from dns.surgeon import GateDraws
from dns.surgeon import surgery_phases
from dns.train import build_surgeon


RECIPES = {"lenet5": "paper_lenet5", "lenet300": "paper_lenet300", "resnet20": "resnet20_cifar10",
           "resnet56": "resnet56_cifar10"}


def recipe(name: str) -> RunConfig:
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=[f"experiment={RECIPES[name]}"]))


def batches_of(cfg: RunConfig, data: str):
    """Endless (images, labels) batches: real MNIST, or 8 random batches over and over."""
    if data == "mnist":
        return SplitBatches(load_split(cfg.dataset, train=True), cfg.dataset.batch_size, cfg.seed)
    images = torch.randn(8, cfg.dataset.batch_size, *sample_shape(cfg.dataset))
    labels = torch.randint(0, cfg.dataset.num_classes, (8, cfg.dataset.batch_size))
    return itertools.cycle(list(zip(images, labels)))


def make_step(model: nn.Module, optimizer, surgeon, batches, iterations):
    def run(steps: int) -> float:
        if surgeon is not None:
            surgeon.draws = GateDraws(0)  # the same gates every round
        start = time.perf_counter()
        for k in range(steps):
            if surgeon is not None:
                surgeon.step(iterations[k % len(iterations)])
            x, y = next(batches)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / steps

    return run


def bench(name: str, steps: int, repeats: int, data: str, reference_steps: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    cfg = recipe(name)
    batches = batches_of(cfg, data)
    reference = get_model(name, **model_args(cfg))
    if data == "mnist":
        train = make_step(reference, build_optimizer(reference, cfg.optimizer, cfg.optimizer.lr), None, batches, [0])
        train(reference_steps)
    phase = surgery_phases(cfg, {n: layer_kind(m) for n, m in prunable_layers(reference).items()})[0]
    iter_stop = max(phase.iter_stop.values())
    spread = [round(k * iter_stop / steps) for k in range(steps)]  # the gate over the whole surgery stage
    surgery_lr = cfg.surgery.lr if cfg.surgery.lr is not None else cfg.optimizer.lr

    def kind(gamma: float | None = None, frozen: bool = False):
        model = copy.deepcopy(reference)
        optimizer = build_optimizer(model, cfg.optimizer, surgery_lr, cfg.surgery.weight_decay)
        if gamma is None:
            return make_step(model, optimizer, None, batches, spread)
        surgeon = build_surgeon(model, cfg, None, None)
        surgeon.begin_phase(phase.c, phase.iter_stop, gamma, phase.power)
        if frozen:  # the first surgery step (its gate always opens), then fine-tuning: no surgeon in the loop
            surgeon.step(0)
            return make_step(model, optimizer, None, batches, spread)
        return make_step(model, optimizer, surgeon, batches, spread)

    runs = {"dense": kind(), "masked": kind(phase.gamma, frozen=True), "gated": kind(phase.gamma),
            "worst": kind(0.0)}
    for run in runs.values():  # warm-up
        run(min(steps, 50))
    rounds = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            rounds[key].append(run(steps))
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--models", nargs="+", choices=list(RECIPES), default=["lenet5", "lenet300"])
    parser.add_argument("--data", choices=["auto", "mnist", "random"], default="auto",
                        help="auto: MNIST for the LeNets, random images for the ResNets")
    parser.add_argument("--reference-steps", type=int, default=2000, help="dense steps before timing (mnist)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.repeats} rounds")
    kinds = ("dense", "masked", "gated", "worst")
    print(f"{'model, round (data)':<26}" + "".join(f"{kind + ' ms':>11}" for kind in kinds)
          + "".join(f"{kind + '/dense':>14}" for kind in kinds[1:]))
    for name in args.models:
        data = args.data if args.data != "auto" else "mnist" if name.startswith("lenet") else "random"
        rounds = bench(name, args.steps, args.repeats, data, args.reference_steps)
        for label, stat in (("median", statistics.median), ("fastest", min)):
            t = {kind: stat(times) for kind, times in rounds.items()}
            print(f"{name + ' ' + label + ' (' + data + ')':<26}" + "".join(f"{1e3 * t[kind]:>11.3f}" for kind in kinds)
                  + "".join(f"{t[kind] / t['dense']:>14.3f}" for kind in kinds[1:]), flush=True)


if __name__ == "__main__":
    main()
