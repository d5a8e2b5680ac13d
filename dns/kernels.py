"""The surgery rule h over a CPU mask in one numba pass, where eager torch needs five passes and three sums.

LeNet-300-100's training step takes about 1 ms, so every pass over fc1's 235,200 weights shows (BENCHMARKS.md).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def rule_pass(w, t, a, b):
    """The surgery rule h over the float32 arrays w (weights) and t (0/1 mask) of one shape, t updated in place; returns
    (pruned, spliced). a and b are compared in float32, as torch compares a float32 tensor with a number.

    Branch-free, so that it vectorizes: a branch per entry took 8 times as long. The counts are float64 sums of
    0s and 1s, exact in any order, which is what `reassoc` lets the compiler choose.
    """
    w, t = w.reshape(-1), t.reshape(-1)  # views of any C-contiguous arrays
    a, b = np.float32(a), np.float32(b)
    pruned, spliced = 0.0, 0.0
    for i in range(w.size):
        magnitude, old = abs(w[i]), t[i]
        kept = old * np.float32(magnitude > a)  # prune at or below a
        new = max(kept, np.float32(magnitude > b))  # splice above b
        t[i] = new
        pruned += old - kept
        spliced += new - kept
    return int(pruned), int(spliced)
