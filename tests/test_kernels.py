import numpy as np
import pytest
import torch

from dns import kernels
from dns.thresholds import update_mask

A, B = 0.1, 0.7  # 0.1 rounds up in float32, so a float64 comparison would differ at w = float32(0.1)


def weights_and_mask(seed: int, kept: float = 0.5):
    """Random float32 weights and a 0/1 mask, with entries exactly at ±a, ±b and 0 (all kept)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(40, 30, generator=gen)
    weight[0, :5] = torch.tensor([A, -A, B, 0.0, -B])
    mask = (torch.rand(40, 30, generator=gen) < kept).float()
    mask[0, :5] = 1.0
    return weight.view(-1).numpy(), mask.view(-1).numpy()


def expected(w, t):
    """The new mask by `thresholds.update_mask`, and the ascending positions where it differs from t."""
    new = update_mask(torch.from_numpy(w), torch.from_numpy(t), A, B).numpy()
    return new, np.flatnonzero(new != t)


@pytest.mark.parametrize("block", [7, 1024])  # 7: the scans cross block borders
@pytest.mark.parametrize("seed", range(5))
def test_both_rule_passes_equal_update_mask_and_count_the_changes(seed, block):
    w, t = weights_and_mask(seed)
    new, changed = expected(w, t)
    assert new[:5].tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]
    spliced = int(((t == 0) & (new == 1)).sum())
    assert 0 < spliced < len(changed)  # both prunes and splices

    plain = t.copy()
    assert kernels.rule_pass(w, plain, A, B) == (len(changed) - spliced, spliced)
    assert np.array_equal(plain, new)

    kept, listed, changes = t.copy(), np.flatnonzero(t), np.empty(w.size, np.int64)
    assert kernels.rule_pass_kept(w, kept, listed, A, B, changes, block) == (len(changed), spliced)
    assert np.array_equal(kept, new) and np.array_equal(changes[:len(changed)], changed)


def test_a_full_list_of_changes_still_counts_and_updates_them_all():
    w, t = weights_and_mask(0)
    new, changed = expected(w, t)
    changes = np.empty(3, np.int64)
    assert kernels.rule_pass_kept(w, t, np.flatnonzero(t), A, B, changes)[0] == len(changed) > 3
    assert np.array_equal(t, new)


def test_merge_changes_keeps_the_kept_list_and_zeroes_pruned_entries():
    w, t = weights_and_mask(1, kept=0.1)
    masked = w * t
    kept = np.flatnonzero(t)
    new, changed = expected(w, t)
    merged = kernels.merge_changes(kept, changed, masked)
    assert np.array_equal(merged, np.flatnonzero(new))
    pruned = changed[t[changed] == 1]
    assert len(pruned) > 0 and (masked[pruned] == 0).all()

    kernels.refresh(w, masked, merged)  # the spliced entries get their weights, the pruned stay 0
    assert np.array_equal(masked, w * new)
