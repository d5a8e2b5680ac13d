"""The CPU passes over a mask, in numba: each one pass over memory where eager torch needs several.

LeNet-300-100's training step takes about 1 ms, so every pass over fc1's 235,200 weights shows. A surgery
step needs W ⊙ T and, when the gate opens, the rule h; both are cheap once the mask is known to change
rarely: after the first update only a handful of fc1's entries change per update (22 at most in a
paper_lenet300 run). So the rule pass reads the weights and a list of the kept positions rather than the
whole mask, and W ⊙ T is refreshed at the kept entries alone, the pruned ones staying 0.
"""

from __future__ import annotations

import numba
import numpy as np

BLOCK = 1024  # entries `rule_pass_kept` counts at a time: a multiple of the vector width


@numba.njit(nogil=True, cache=True)
def rule_pass(w, t, a, b):
    """The surgery rule h over the float32 arrays w (weights) and t (0/1 mask), t updated in place; returns
    (pruned, spliced). a and b are compared in float32, as torch compares a float32 tensor with a number.

    One scalar pass, for a mask whose kept list is not known (its first update, mostly); `rule_pass_kept`
    serves all others.
    """
    a, b = np.float32(a), np.float32(b)
    pruned, spliced = 0, 0
    for i in range(w.size):
        magnitude, old = abs(w[i]), t[i]
        new = np.float32(1.0) if magnitude > b else (old if magnitude > a else np.float32(0.0))
        if new != old:
            t[i] = new
            pruned += int(old)
            spliced += int(new)
    return pruned, spliced


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})  # reassoc: the count over a block vectorizes
def rule_pass_kept(w, t, kept, a, b, changes, block=BLOCK):
    """`rule_pass` when `kept` lists the positions of t's ones, ascending. Returns (changed, spliced): how
    many entries of t changed and how many of those became 1; the positions of the first len(changes)
    changes go into `changes`, ascending.

    It reads all of w but t only where a splice is possible: block by block, while the block of w is in
    cache, a prune can only happen at a kept position, and a splice only where more entries lie above b
    than kept ones do; only such blocks (rare after the first update) are read entry by entry.
    """
    a, b = np.float32(a), np.float32(b)
    changed, spliced, next_kept = 0, 0, 0
    for start in range(0, w.size, block):
        wb, tb = w[start:start + block], t[start:start + block]
        above = np.float32(0.0)
        for i in range(wb.size):  # vectorized, w alone
            above += np.float32(abs(wb[i]) > b)
        kept_above = 0
        while next_kept < kept.size and kept[next_kept] < start + wb.size:
            j = kept[next_kept]
            next_kept += 1
            magnitude = abs(w[j])
            if magnitude <= a:
                t[j] = 0.0
                if changed < changes.size:
                    changes[changed] = j
                changed += 1
            elif magnitude > b:
                kept_above += 1
        if int(above) == kept_above:
            continue
        for i in range(wb.size):
            if abs(wb[i]) > b and tb[i] == 0.0:
                tb[i] = 1.0
                if changed < changes.size:
                    changes[changed] = start + i
                changed += 1
                spliced += 1
    if spliced and changed > spliced:  # a block's prunes come before its splices: sort
        changes[:min(changed, changes.size)].sort()
    return changed, spliced


@numba.njit(nogil=True, cache=True)
def merge_changes(kept, changes, masked):
    """The ascending positions `kept` of a mask's ones after the entries at `changes` (ascending) flipped.

    A change at a kept position is a prune: it leaves `kept` and its entry of `masked` (W ⊙ T) becomes 0.
    Any other change is a splice: it joins `kept` (the next `refresh` writes its entry).
    """
    merged = np.empty(kept.size + changes.size, kept.dtype)
    i = n = 0  # next unread entry of kept, next free entry of merged
    for change in changes:
        stop = np.searchsorted(kept, change)  # the kept positions before the change move as one block
        merged[n:n + stop - i] = kept[i:stop]
        n, i = n + stop - i, stop
        if i < kept.size and kept[i] == change:
            masked[change] = 0.0
            i += 1
        else:
            merged[n] = change
            n += 1
    merged[n:n + kept.size - i] = kept[i:]
    n += kept.size - i
    return merged[:n]


@numba.njit(nogil=True, cache=True)
def refresh(w, masked, kept):
    """W ⊙ T into `masked` where T is 1 (positions `kept`); elsewhere `masked` holds 0 already."""
    for k in range(kept.size):
        masked[kept[k]] = w[kept[k]]
