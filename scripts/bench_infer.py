"""Dense against sparse inference on the CPU, side by side in one process: latency per batch and images/s.

    DNS_DATA=../shared/data python scripts/bench_infer.py [MODEL_FILE ...] [--batches 1 64 1000] [--threads 1 2]
        [--seconds 0.5] [--out results/bench_infer.json]
    python scripts/bench_infer.py --sweep [--batches 1 8 64 1000]   # single layers against density: the default

Each model is loaded twice, `dns.load(path)` (dense: the pruned weights with their zeros) and
`dns.load(path, sparse=True)` (fully connected layers below dns.sparse.MAX_DENSITY as compressed rows), and
the two are timed on the same random batch, call for call in turn (5 to 500 calls each, for about `--seconds`),
so that drifts of a shared machine hit both alike. The speed-up is reported for the median calls (what a user sees) and for the fastest ones (the work
itself: on a shared machine other processes only ever add time). The models: the MODEL_FILEs (dns checkpoints or .dns files: our
runs' final.pt), the authors' released sparse LeNets (imported from $DNS_DATA/dns-caffe), and AlexNet with
random weights pruned at random to the paper's per-layer densities (Table 4: fc6 3.7 %, fc7 6.6 %, fc8 4.6 %),
whole at batch 1 and 64 and its fc6–fc8 alone at every batch. Every pair's outputs are checked to agree.

--sweep times single layers of the paper's fc shapes, pruned at random to 2–20 %, against their dense selves:
where the sparse product stops paying at some batch size, which sets dns.sparse.MAX_DENSITY.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

import dns
from dns.caffe import read_net, to_checkpoint
from dns.checkpoint import fill, load_checkpoint
from dns.export import effective_state_dict, is_dns_file, read
from dns.models import get_model, input_shape, prunable_layers
from dns.paper import LAYERS
from dns.sparse import sparse_layers


Case = tuple[str, nn.Module, tuple[int, ...], list[int]]  # name, dense model, input shape, batch sizes


def from_file(path: Path, batches: list[int]) -> Case:
    model = dns.load(path)
    name = (read(path.read_bytes())[0] if is_dns_file(path) else load_checkpoint(path))["model"]
    return f"{name} ({path})", model, input_shape(name), batches


def authors_models(batches: list[int]) -> list[Case]:
    """The authors' released sparse LeNets, if $DNS_DATA holds them."""
    root = Path(os.environ.get("DNS_DATA", "../shared/data")) / "dns-caffe"
    cases = []
    for name, folder in (("lenet300", "lenet300100"), ("lenet5", "lenet5")):
        path = root / folder / f"caffe_{folder}_sparse.caffemodel"
        if path.is_file():
            checkpoint = to_checkpoint(read_net(path.read_bytes())[1], name, str(path))
            model = fill(get_model(name), effective_state_dict(checkpoint)).eval()
            cases.append((f"{name} (authors' sparse)", model, input_shape(name), batches))
    return cases


def alexnet_at_paper_densities(seed: int = 0) -> nn.Module:
    """AlexNet, random weights, each layer pruned at random to the paper's remaining %."""
    torch.manual_seed(seed)
    model = get_model("alexnet").eval()
    with torch.no_grad():
        for name, layer in prunable_layers(model).items():
            layer.weight.mul_(torch.rand_like(layer.weight) < LAYERS["alexnet"][name] / 100)
    return model


def fc_layers(model: nn.Module) -> nn.Module:
    """AlexNet's classifier, fc6 to fc8, as one module (dropout is the identity in eval mode)."""
    return nn.Sequential(OrderedDict(fc6=model.fc6, relu6=nn.ReLU(), fc7=model.fc7, relu7=nn.ReLU(),
                                     fc8=model.fc8)).eval()


def time_pair(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, seconds: float) -> dict[str, list[float]]:
    """Seconds of each call of each, timed in turn on the same batch for about `seconds` in all."""
    with torch.no_grad():
        expected, got = dense(x), sparse(x)  # also the warm-up: the kernels compile on their first call
        scale = float(expected.abs().max()) or 1.0
        if float((expected - got).abs().max()) > 1e-5 * scale:
            raise AssertionError(f"sparse outputs differ from dense by {float((expected - got).abs().max()):.3g}")
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        start = time.perf_counter()
        while len(times["dense"]) < 5 or (time.perf_counter() - start < seconds and len(times["dense"]) < 500):
            # (500 calls each at most: a LeNet at batch 1 is done in well under `seconds`)
            for name, model in (("dense", dense), ("sparse", sparse)):
                t = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - t)
    return times


SWEEP_SHAPES = [(784, 300), (300, 100), (100, 10), (800, 500), (500, 10), (9216, 4096), (4096, 4096), (4096, 1000)]
SWEEP_DENSITIES = [0.02, 0.05, 0.07, 0.1, 0.2]


def sweep(batches: list[int], threads: list[int], seconds: float) -> None:
    """Median speed-up of a SparseLinear over its dense nn.Linear, per layer shape, density and batch size."""
    print("| layer (in x out) | density | threads | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|---:|---:|" + "---:|" * len(batches))
    for inputs, outputs in SWEEP_SHAPES:
        for density in SWEEP_DENSITIES:
            torch.manual_seed(0)
            dense = nn.Linear(inputs, outputs).eval()
            with torch.no_grad():
                dense.weight.mul_(torch.rand_like(dense.weight) < density)
            sparse = dns.SparseLinear.from_linear(dense)
            for n in threads:
                torch.set_num_threads(n)
                cells = []
                for batch in batches:
                    times = time_pair(dense, sparse, torch.randn(batch, inputs), seconds)
                    cells.append(f"{statistics.median(times['dense']) / statistics.median(times['sparse']):.2f}×")
                print(f"| {inputs} x {outputs} | {100 * density:g} % | {n} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", type=Path, help="dns checkpoints or .dns files")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64, 1000])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=0.5, help="time spent on each pair (at least 5 calls)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--sweep", action="store_true", help="single layers against density instead of models")
    args = parser.parse_args()
    if args.sweep:
        if args.out:
            parser.error("--out writes the models' rows; --sweep prints its table only")
        return sweep(args.batches, args.threads, args.seconds)

    cases = [from_file(path, args.batches) for path in args.models] + authors_models(args.batches)
    alexnet = alexnet_at_paper_densities()
    cases.append(("alexnet (paper densities)", alexnet, input_shape("alexnet"), [b for b in args.batches if b <= 64]))
    cases.append(("alexnet fc6-fc8 (paper densities)", fc_layers(alexnet), (256 * 6 * 6,), args.batches))

    rows = []
    print("| model | sparse layers | threads | batch | dense ms | sparse ms | dense img/s | sparse img/s | speed-up | "
          "fastest calls |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, dense, shape, batches in cases:
        sparse = dns.sparsify(copy.deepcopy(dense))
        shown = ", ".join(f"{layer} {100 * d:.1f} %" for layer, d in sparse_layers(sparse).items()) or "none"
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in batches:
                x = torch.randn(batch, *shape)
                times = time_pair(dense, sparse, x, args.seconds)
                t_dense, t_sparse = statistics.median(times["dense"]), statistics.median(times["sparse"])
                fastest = min(times["dense"]) / min(times["sparse"])
                rows.append({"model": name, "sparse_layers": sparse_layers(sparse), "threads": threads, "batch": batch,
                             "dense_s": t_dense, "sparse_s": t_sparse, "speedup": t_dense / t_sparse,
                             "speedup_fastest": fastest, "calls": len(times["dense"])})
                print(f"| {name} | {shown} | {threads} | {batch} | {1e3 * t_dense:.3f} | {1e3 * t_sparse:.3f} | "
                      f"{batch / t_dense:,.0f} | {batch / t_sparse:,.0f} | **{t_dense / t_sparse:.2f}×** | "
                      f"{fastest:.2f}× |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "cpu": _cpu(), "rows": rows}, indent=1))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
