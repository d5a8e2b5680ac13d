"""Would a sparse convolution pay on the CPU? Two candidates against torch's dense conv2d, one layer at a time.

    python scripts/bench_sparse_conv.py [--threads 1 2] [--seconds 0.4]

The layers: LeNet-5's conv1 and conv2 shapes at the densities the authors' pruned model keeps (14 % and 3.1 %),
and AlexNet's conv5 without its two groups (384 → 256, 3 × 3; twice the work of the grouped layer) at the
paper's 32.5 %, each pruned at random. The candidates, both on one thread whatever torch's thread count:
- im2col: the input unfolded into columns (`F.unfold`), then dns.sparse's compressed-row product over them;
- direct: a numba loop over the kept weights, each adding its weight times a shifted input plane.
Both are checked against conv2d's output. BENCHMARKS.md records what they gave (the conv layers stay dense).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
import torch
import torch.nn.functional as F

from dns.sparse import _axpy_rows, csr_arrays

LAYERS = {  # name: (in channels, out channels, kernel, input height = width, density, batch sizes)
    "LeNet-5 conv1": (1, 20, 5, 28, 0.14, (1, 64, 1000)),
    "LeNet-5 conv2": (20, 50, 5, 12, 0.031, (1, 64, 1000)),
    "AlexNet conv5, ungrouped": (384, 256, 3, 15, 0.325, (1, 16)),
}


def im2col_conv(x: torch.Tensor, crow, col, val, bias, kernel: int) -> torch.Tensor:
    n, _, h, w = x.shape
    columns = F.unfold(x, kernel)  # [n, c·k·k, positions]
    xt = columns.permute(1, 0, 2).reshape(columns.shape[1], -1).contiguous().numpy()
    outt = np.empty((len(crow) - 1, xt.shape[1]), dtype=np.float32)
    _axpy_rows(crow, col, val, bias, xt, outt, 0, len(crow) - 1)
    return torch.from_numpy(outt).view(-1, n, h - kernel + 1, w - kernel + 1).permute(1, 0, 2, 3)


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _direct(x, out_ch, in_ch, dy, dx, val, bias, out):
    for n in range(out.shape[0]):
        for o in range(out.shape[1]):
            out[n, o] = bias[o]
        for q in range(len(val)):
            v, o, c, ky, kx = val[q], out_ch[q], in_ch[q], dy[q], dx[q]
            for i in range(out.shape[2]):
                for j in range(out.shape[3]):
                    out[n, o, i, j] += v * x[n, c, i + ky, j + kx]


def direct_conv(x: torch.Tensor, kept, bias, kernel: int) -> torch.Tensor:
    n, _, h, w = x.shape
    out = np.empty((n, len(bias), h - kernel + 1, w - kernel + 1), dtype=np.float32)
    _direct(x.numpy(), *kept, bias, out)
    return torch.from_numpy(out)


def median_seconds(call, seconds: float) -> float:
    call()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=0.4, help="time spent on each candidate and case")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| layer | density | threads | batch | dense ms | im2col ms | direct ms | im2col speed-up | direct speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (cin, cout, kernel, size, density, batches) in LAYERS.items():
        weight = torch.randn(cout, cin, kernel, kernel) * (torch.rand(cout, cin, kernel, kernel) < density)
        bias = torch.randn(cout)
        csr = csr_arrays(weight.reshape(cout, -1))
        kept = [a.astype(np.int64) for a in np.nonzero(weight.numpy())]
        kept.append(weight.numpy()[tuple(kept)])
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in batches:
                x = torch.randn(batch, cin, size, size)
                with torch.no_grad():
                    dense = F.conv2d(x, weight, bias)
                    for candidate in (im2col_conv(x, *csr, bias.numpy(), kernel), direct_conv(x, kept, bias.numpy(), kernel)):
                        torch.testing.assert_close(candidate, dense, rtol=1e-5, atol=1e-4)
                    times = [median_seconds(call, args.seconds) for call in (
                        lambda: F.conv2d(x, weight, bias), lambda: im2col_conv(x, *csr, bias.numpy(), kernel),
                        lambda: direct_conv(x, kept, bias.numpy(), kernel))]
                print(f"| {name} | {density:.1%} | {threads} | {batch} | {times[0] * 1e3:.3f} | {times[1] * 1e3:.3f} | "
                      f"{times[2] * 1e3:.3f} | {times[0] / times[1]:.2f}× | {times[0] / times[2]:.2f}× |")


if __name__ == "__main__":
    main()
