"""Cost of a surgery training step against a dense one, measured side by side in one process.

    python scripts/bench_step.py [--steps 2000] [--repeats 5] [--threads N] [--models lenet5 lenet300]

For lenet5 and lenet300 it times the mean training step (forward, backward, SGD update, batch 64) of
  dense   the plain model, no masks (the reference stage);
  masked  the masked model whose masks never change (fine-tuning): the cost of masking alone;
  gated   the masked model with the surgeon under the paper recipe's gate: iteration i runs over the
          surgery stage (0 .. iter_stop) so each layer updates its mask with probability sigma(i);
  worst   the masked model updating every layer's mask at every step (gamma = 0).
The four are interleaved over --repeats rounds, so that drifts of the machine hit all four alike; every round
of `gated` draws the same gates. Each one's ratio to dense is printed for the median round and for the
fastest round: on a shared machine other processes only ever add time, so the fastest rounds show the cost
of the work itself (as `timeit` advises), the median what a run sees.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dns.models import get_model
from dns.surgeon import Surgeon

# the paper recipes' surgery stage: per-layer c and iter_stop of the authors' released models
RECIPES = {
    "lenet5": dict(c={"conv1": 2.0, "conv2": 3.0, "fc1": 4.0, "fc2": 2.5}, iter_stop=14000),
    "lenet300": dict(c={"fc1": 5.0, "fc2": 3.0, "fc3": 3.0}, iter_stop=20000),
}


def make_step(model: nn.Module, surgeon: Surgeon | None, images, labels, iterations):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def run(steps: int) -> float:
        if surgeon is not None:
            surgeon.generator.manual_seed(0)  # the same gates every round
        start = time.perf_counter()
        for k in range(steps):
            if surgeon is not None:
                surgeon.step(iterations[k % len(iterations)])
            x, y = images[k % len(images)], labels[k % len(labels)]
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / steps

    return run


def bench(name: str, steps: int, repeats: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    images = torch.rand(32, 64, 1, 28, 28)
    labels = torch.randint(0, 10, (32, 64))
    recipe = RECIPES[name]
    iter_stop = recipe["iter_stop"]
    spread = [round(k * iter_stop / steps) for k in range(steps)]  # the gate over the whole surgery stage

    def surgeon_for(model: nn.Module, gamma: float, stop: int = iter_stop) -> Surgeon:
        stops = {layer: stop for layer in recipe["c"]}
        surgeon = Surgeon(model, c=recipe["c"], iter_stop=stops, gamma=gamma, power=1.0)
        surgeon.start()
        return surgeon

    dense = get_model(name)
    masked_model, gated_model, worst_model = get_model(name), get_model(name), get_model(name)
    runs = {
        "dense": make_step(dense, None, images, labels, spread),
        "masked": make_step(masked_model, surgeon_for(masked_model, 1e-4, stop=0), images, labels, spread),
        "gated": make_step(gated_model, surgeon_for(gated_model, 1e-4), images, labels, spread),
        "worst": make_step(worst_model, surgeon_for(worst_model, 0.0), images, labels, spread),
    }
    for run in runs.values():  # warm-up
        run(50)
    rounds = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            rounds[key].append(run(steps))
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--models", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.repeats} rounds")
    kinds = ("dense", "masked", "gated", "worst")
    print(f"{'model, round':<18}" + "".join(f"{kind + ' ms':>11}" for kind in kinds)
          + "".join(f"{kind + '/dense':>14}" for kind in kinds[1:]))
    for name in args.models:
        rounds = bench(name, args.steps, args.repeats)
        for label, stat in (("median", statistics.median), ("fastest", min)):
            t = {kind: stat(times) for kind, times in rounds.items()}
            print(f"{name + ' ' + label:<18}" + "".join(f"{1e3 * t[kind]:>11.3f}" for kind in kinds)
                  + "".join(f"{t[kind] / t['dense']:>14.3f}" for kind in kinds[1:]))


if __name__ == "__main__":
    main()
