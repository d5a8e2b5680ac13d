"""Sparse inference: the fully connected layers of a pruned model as compressed-row (CSR) products.

At the densities DNS reaches (0.7–7 % in the paper's fc layers) a product over the kept weights alone does a
few percent of a dense layer's work and reads a few percent of its bytes. `sparsify(model)` swaps each sparse
enough `nn.Linear` for a `SparseLinear`; `dns.load(path, sparse=True)` does it on loading. Conv layers stay dense.

The products are small numba loops rather than torch's CSR `sparse.mm`, which took 14–40 µs a call on the
LeNets' small layers where these take 1–7 µs, and at batch 1000 8 ms on LeNet-5's fc1 against 1 ms here
(BENCHMARKS.md): one dot product per sample and row up to batch 4 (or 16 output rows), eight samples at a time
up to batch 16, a loop vectorized over the batch above. Column indices are 16-bit where the layer has at most
65,536 inputs: 6 bytes read per kept weight instead of 8, which took AlexNet's fc6 at batch 1 from 1.6 to 1.05
ms.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import nn

# At or below this density a Linear layer runs sparse, at any batch size (scripts/bench_infer.py --sweep,
# BENCHMARKS.md: up to 7 % every layer of over 100K weights gained at every batch size and thread count, at 10 %
# some lost; 7 % keeps AlexNet's fc7, 6.6 % in the paper, sparse).
MAX_DENSITY = 0.07
FEW_SAMPLES, FEW_ROWS = 4, 16  # up to these batch sizes or output rows, one dot product per sample and row beats
# the batched loop, whose inner loop over the samples is then too short to pay for updating the row per weight
EIGHTS_UP_TO = 16  # up to this batch size, eight samples at a time with their sums held in registers (the batch
# padded with zero samples to a multiple of 8): at batch 8 twice as fast as the batched loop, which stores its row
# back per weight; from batch 24 slower, each row read again per eight samples
PARALLEL_WORK = 1_000_000  # multiply-adds (non-zeros × batch) from which a product is split over threads (below,
# the threads of torch that spin on after its own ops slow it down: LeNet-300-100 at batch 64 ran slower on 2)


@numba.njit(nogil=True, cache=True)
def _dot_rows(crow, col, val, bias, x, out, first, last):
    """out[n, r] = bias[r] + Σ_j val[j]·x[n, col[j]] for rows first..last-1: each sample against each kept row."""
    for n in range(x.shape[0]):
        xn, on = x[n], out[n]
        for r in range(first, last):
            cols, vals = col[crow[r]:crow[r + 1]], val[crow[r]:crow[r + 1]]  # the row's own arrays, indexed
            # from 0 by range(): LLVM then proves no index negative and drops numba's wrap-around check on each
            # (AlexNet's fc6 at batch 1: 0.96 to 0.53 ms)
            a0 = a1 = a2 = a3 = val.dtype.type(0)  # four sums in flight: one would wait on each add
            for q in range(len(vals) // 4):
                j = 4 * q
                a0 += vals[j] * xn[cols[j]]
                a1 += vals[j + 1] * xn[cols[j + 1]]
                a2 += vals[j + 2] * xn[cols[j + 2]]
                a3 += vals[j + 3] * xn[cols[j + 3]]
            for j in range(len(vals) - len(vals) % 4, len(vals)):
                a0 += vals[j] * xn[cols[j]]
            on[r] = bias[r] + ((a0 + a1) + (a2 + a3))


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _eights_rows(crow, col, val, bias, xt, outt, first, last):
    """As _axpy_rows for a batch of a multiple of 8, eight samples at a time: each row's kept weights read once per
    eight samples, into eight sums that stay in registers."""
    for r in range(first, last):
        cols, vals, b = col[crow[r]:crow[r + 1]], val[crow[r]:crow[r + 1]], bias[r]
        for i in range(0, xt.shape[1], 8):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = b
            for j in range(len(vals)):
                v, xc = vals[j], xt[cols[j], i:i + 8]
                a0 += v * xc[0]
                a1 += v * xc[1]
                a2 += v * xc[2]
                a3 += v * xc[3]
                a4 += v * xc[4]
                a5 += v * xc[5]
                a6 += v * xc[6]
                a7 += v * xc[7]
            o = outt[r, i:i + 8]
            o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] = a0, a1, a2, a3, a4, a5, a6, a7


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _axpy_rows(crow, col, val, bias, xt, outt, first, last):
    """outt[r, :] = bias[r] + Σ_j val[j]·xt[col[j], :] for rows first..last-1: the batch along the last axis, so
    that the innermost loop runs over contiguous samples and vectorizes."""
    n = xt.shape[1]
    for r in range(first, last):
        for i in range(n):
            outt[r, i] = bias[r]
        for j in range(crow[r], crow[r + 1]):
            v, c = val[j], col[j]
            for i in range(n):
                outt[r, i] += v * xt[c, i]


@numba.njit(nogil=True, cache=True)
def _batch_rows(crow, col, val, bias, xt, outt, first, last):
    """outt[r, :] for rows first..last-1 of a batch along the last axis, by the loop that suits its size."""
    if xt.shape[1] <= EIGHTS_UP_TO:
        _eights_rows(crow, col, val, bias, xt, outt, first, last)
    else:
        _axpy_rows(crow, col, val, bias, xt, outt, first, last)


@numba.njit(nogil=True, cache=True, parallel=True)
def _dot_parallel(crow, col, val, bias, x, out, chunks):
    """_dot_rows over chunks[k] = (first sample, last sample + 1, first row, last row + 1), one thread a chunk."""
    for k in numba.prange(chunks.shape[0]):
        first, last = chunks[k, 0], chunks[k, 1]
        _dot_rows(crow, col, val, bias, x[first:last], out[first:last], chunks[k, 2], chunks[k, 3])


@numba.njit(nogil=True, cache=True, parallel=True)
def _batch_parallel(crow, col, val, bias, xt, outt, bounds):
    for k in numba.prange(len(bounds) - 1):
        _batch_rows(crow, col, val, bias, xt, outt, bounds[k], bounds[k + 1])


def csr_arrays(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row starts int32, column indices, values) of a 2-d weight's non-zero entries, row by row; the indices are
    uint16 where the layer has at most 65,536 inputs, else int32."""
    w = weight.detach().cpu().numpy()
    rows, cols = np.nonzero(w)  # in row-major order
    crow = np.zeros(w.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=crow[1:])
    return crow, cols.astype(np.uint16 if w.shape[1] <= 1 << 16 else np.int32), w[rows, cols]


def row_bounds(crow: np.ndarray, parts: int) -> np.ndarray:
    """Row indices that split the matrix into `parts` runs of rows with about equal numbers of non-zeros."""
    targets = np.linspace(0, crow[-1], parts + 1)
    bounds = np.searchsorted(crow, targets, side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, len(crow) - 1
    return np.maximum.accumulate(bounds)


def csr_linear(crow: np.ndarray, col: np.ndarray, val: np.ndarray, bias: np.ndarray, x: np.ndarray,
               threads: int = 1) -> np.ndarray:
    """x @ Wᵀ + bias for x of shape [batch, in] and W in CSR: [batch, out]; above FEW_SAMPLES samples (and
    FEW_ROWS rows) the transpose of a C-contiguous [out, batch] array, as `.t()` gives."""
    rows, batch = len(crow) - 1, x.shape[0]
    parallel = threads > 1 and len(val) * batch >= PARALLEL_WORK
    if parallel:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if batch <= FEW_SAMPLES or rows <= FEW_ROWS:
        x, out = np.ascontiguousarray(x), np.empty((batch, rows), dtype=val.dtype)
        if not parallel:
            _dot_rows(crow, col, val, bias, x, out, 0, rows)
            return out
        if batch >= threads:  # a share of the samples each
            samples = np.linspace(0, batch, threads + 1).astype(np.int64)
            chunks = [[samples[k], samples[k + 1], 0, rows] for k in range(threads)]
        else:  # a share of the rows each
            bounds = row_bounds(crow, threads)
            chunks = [[0, batch, bounds[k], bounds[k + 1]] for k in range(threads)]
        _dot_parallel(crow, col, val, bias, x, out, np.array(chunks))
        return out
    if batch <= EIGHTS_UP_TO:  # eight samples at a time: padded with zero samples to a multiple of 8
        xt = np.zeros((x.shape[1], -(-batch // 8) * 8), dtype=x.dtype)
        xt[:, :batch] = x.T
    else:
        xt = np.ascontiguousarray(x.T)
    outt = np.empty((rows, xt.shape[1]), dtype=val.dtype)
    if parallel:
        _batch_parallel(crow, col, val, bias, xt, outt, row_bounds(crow, threads))
    else:
        _batch_rows(crow, col, val, bias, xt, outt, 0, rows)
    return outt[:, :batch].T  # a view: the next sparse layer's xt without a copy (a copy here cost up to 20 % at
    # batch 1000)


class SparseLinear(nn.Module):
    """`nn.Linear` for CPU inference with its weight in compressed rows: the same outputs (to float rounding)
    from the non-zero weights alone, in float32 or float64. It holds no parameters, only buffers: it computes no
    gradients, and its state_dict fits only a layer of the same sparsity pattern. Above 4 samples (and 16 output
    rows) its output is a transposed view, as `.t()` gives (the next SparseLinear reads it without a copy):
    `.reshape`, not `.view`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if weight.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"SparseLinear takes float32 or float64 weights, got {weight.dtype}")
        self.out_features, self.in_features = weight.shape
        crow, col, val = csr_arrays(weight)
        self.register_buffer("crow", torch.from_numpy(crow))
        self.register_buffer("col", torch.from_numpy(col.view(np.int16) if col.dtype == np.uint16 else col))  # (torch
        # has no uint16 tensors everywhere: int16 bits, read back as uint16 below)
        self.register_buffer("values", torch.from_numpy(val))
        self.register_buffer("bias", None if bias is None else bias.detach().cpu().clone())
        self._arrays: tuple | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "SparseLinear":
        return cls(linear.weight, linear.bias)

    @property
    def density(self) -> float:
        return self.values.numel() / (self.out_features * self.in_features)

    def kernel_arrays(self) -> tuple[np.ndarray, ...]:
        """(crow, col, values, bias) as the kernels take them: numpy views of the buffers, made again only when a
        buffer was replaced (`.to()`, `.double()`, `layer.bias = ...`). A LeNet layer's product at batch 1 takes
        a few µs: making the views afresh every call would cost about as much again."""
        buffers, cache = self._buffers, self._arrays
        if (cache is None or cache[0] is not buffers["crow"] or cache[1] is not buffers["col"]
                or cache[2] is not buffers["values"] or cache[3] is not buffers["bias"]):
            crow, col, values, bias = (buffers[name] for name in ("crow", "col", "values", "bias"))
            cols = col.numpy().view(np.uint16) if col.dtype == torch.int16 else col.numpy()
            biases = bias.numpy() if bias is not None else np.zeros(self.out_features, values.numpy().dtype)
            self._arrays = cache = (crow, col, values, bias, (crow.numpy(), cols, values.numpy(), biases))
        return cache[4]

    def __getstate__(self) -> dict:
        # a copy (deepcopy, pickle) makes its own views: copied arrays would not follow its buffers
        return {**self.__dict__, "_arrays": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = self._buffers["values"]
        if not (x.is_cpu and values.is_cpu) or x.dtype != values.dtype:
            raise RuntimeError(f"SparseLinear runs on the CPU in {values.dtype} (its weights' type); got {x.dtype} "
                               f"on {x.device}, weights on {values.device}")
        if x.shape[-1] != self.in_features:
            raise RuntimeError(f"SparseLinear takes inputs of {self.in_features} features, got shape {tuple(x.shape)}")
        if x.requires_grad:
            if torch.is_grad_enabled():
                raise RuntimeError("SparseLinear is for inference and computes no gradients: "
                                   "run it under torch.no_grad()")
            x = x.detach()
        if x.dim() == 2:  # (each torch call saved is a µs: a LeNet layer's product at batch 1 takes a few)
            return torch.from_numpy(csr_linear(*self.kernel_arrays(), x.numpy(), torch.get_num_threads()))
        out = csr_linear(*self.kernel_arrays(), x.reshape(-1, self.in_features).numpy(), torch.get_num_threads())
        return torch.from_numpy(out).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, density={self.density:.2%}"


def sparsify(model: nn.Module, max_density: float = MAX_DENSITY) -> nn.Module:
    """Swap, in place, each `nn.Linear` with at most `max_density` non-zeros (a fraction) for a `SparseLinear`;
    returns the model, for inference on the CPU. The zeros are what is skipped: a layer with a surgeon's masks
    gives its W ⊙ T (but load or `Surgeon.remove()` first: a surgeon would act on the layers swapped out).
    `nn.MultiheadAttention` keeps its out_proj: it reads the weight itself rather than calling the layer."""
    if not 0 <= max_density <= 1:
        raise ValueError(f"max_density must lie in [0, 1], got {max_density}")
    for parent in list(model.modules()):
        if isinstance(parent, nn.MultiheadAttention):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.weight.count_nonzero() <= max_density * child.weight.numel():
                setattr(parent, name, SparseLinear.from_linear(child))
    return model


def sparse_layers(model: nn.Module) -> dict[str, float]:
    """{name: density} of the model's SparseLinear layers."""
    return {name: m.density for name, m in model.named_modules() if isinstance(m, SparseLinear)}
