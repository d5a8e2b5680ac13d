"""The baselines' rules on hand-made tensors: Han's threshold and its frozen pruned weights, DNS without splicing,
gradual magnitude pruning's cubic schedule and its sparsity at each step."""

import copy
import math

import pytest
import torch
from torch import nn

from dns import Surgeon
from dns.baselines import (GradualMagnitude, Han, gmp_sparsity, han_threshold, magnitude_threshold,
                           quality_for_density, weight_std)
from dns.masks import attach_masks


def linear(values, bias=False) -> nn.Linear:
    layer = nn.Linear(len(values), 1, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([values]))
    return layer


def test_weight_std_is_the_population_std_of_the_nonzero_weights():
    mean, std = weight_std([torch.tensor([0.1, -0.2, 0.0]), torch.tensor([0.3, -0.4])])
    assert mean == pytest.approx(-0.05) and std == pytest.approx(math.sqrt(0.075 - 0.0025))  # the 0.0 left out


def test_han_threshold_reaches_quality_times_std_in_equal_steps():
    assert [han_threshold(0.5, 2.0, r, 4) for r in (1, 2, 3, 4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert han_threshold(0.5, 2.0, 1, 1) == 1.0  # one round: one-shot pruning at quality × std


def test_han_prunes_at_each_round_and_holds_the_pruned_weights_at_zero():
    torch.manual_seed(0)
    model = nn.Sequential(linear([0.1, -0.2, 0.3, -0.4]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9, weight_decay=0.01)
    pruner = Han(model, quality=1.0, rounds=2, round_iters=3)
    std = math.sqrt(0.075 - 0.0025)  # of 0.1, -0.2, 0.3, -0.4
    layer = pruner.layers[0]
    assert layer.sigma == pytest.approx(std)
    masks, weights = [], []
    for i in range(7):
        assert pruner.step(i, optimizer) == (1 if i in (0, 3) else 0)  # rounds start at 0 and 3, none after
        masks.append(layer.mask("weight").tolist()[0])
        loss = model(torch.randn(8, 4)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        grad = model[0].weight_orig.grad.clone()
        optimizer.step()
        weights.append(model[0].weight_orig.detach().clone()[0])
        assert torch.equal(grad * (1 - layer.mask("weight")), torch.zeros_like(grad))  # no gradient reaches them
    assert layer.a == pytest.approx(std)  # round 2 of 2: the full quality × std
    assert masks[0] == [0, 1, 1, 1] and masks[3] == masks[6] == [0, 0, 1, 1]  # 0.1 < std/2; 0.2 < std
    assert all(w[0] == 0 for w in weights) and all(w[1] == 0 for w in weights[3:])  # exactly 0, momentum included
    assert weights[2][1] != 0 and weights[-1][2] != weights[3][2]  # the kept weights train on


def test_han_never_returns_a_pruned_weight():
    model = nn.Sequential(linear([0.1, -0.2, 0.3, -0.4]))
    pruner = Han(model, quality=1.0, rounds=2, round_iters=1)
    pruner.step(0)
    with torch.no_grad():
        model[0].weight_orig[0, 0] = 5.0  # far above any threshold
    pruner.step(1)
    assert pruner.layers[0].mask("weight").tolist() == [[0, 0, 1, 1]]


@pytest.mark.parametrize("splice, expected", [(True, [1, 0, 1, 1]), (False, [0, 0, 1, 1])])
def test_dns_without_splicing_never_sets_a_mask_back_to_one(splice, expected):
    model = nn.Sequential(linear([0.1, -0.2, 0.3, -0.4]))
    # |w|: mean 0.25, std sqrt(0.075 - 0.0625); c 0: a = 0.225, b = 0.275
    surgeon = Surgeon(model, c=0.0, gamma=0.0, splice=splice)
    assert (surgeon.layers[0].a, surgeon.layers[0].b) == pytest.approx((0.225, 0.275))
    surgeon.step()
    assert surgeon.layers[0].mask("weight").tolist() == [[0, 0, 1, 1]]
    with torch.no_grad():
        model[0].weight_orig[0, 0] = 1.0  # grows past b
    surgeon.step()
    assert surgeon.layers[0].mask("weight").tolist() == [expected]
    assert surgeon.layers[0].spliced == (1 if splice else 0)


def test_gmp_sparsity_follows_the_cubic_schedule():
    # s_i 0.1, s_f 0.9, t0 100, n 4, dt 50: s_t = 0.9 - 0.8 (1 - (t - 100)/200)^3
    values = [gmp_sparsity(t, 0.1, 0.9, 100, 4, 50) for t in (0, 100, 150, 200, 250, 300, 1000)]
    assert values == pytest.approx([0.1, 0.1, 0.9 - 0.8 * 0.421875, 0.9 - 0.8 * 0.125, 0.9 - 0.8 * 0.015625, 0.9, 0.9])


def test_gmp_prunes_each_layer_to_the_schedule_smallest_magnitudes_first():
    weights = torch.arange(1, 101, dtype=torch.float32) / 100
    model = nn.Sequential(linear(weights[torch.randperm(100, generator=torch.Generator().manual_seed(0))].tolist()))
    pruner = GradualMagnitude(model, 0.9, start=0, end=300, every=100)
    mask, weight = pruner.layers[0].mask("weight"), model[0].weight_orig
    pruned = {}
    for t in range(400):
        if pruner.step(t):
            pruned[t] = int((mask == 0).sum())
            assert torch.equal(weight[mask == 0], torch.zeros(pruned[t]))  # held at zero
    # s = 0, 0.9 - 0.9 (2/3)^3 = 0.6333, 0.9 - 0.9/27 = 0.8667, 0.9 of the 100 weights
    assert pruned == {0: 0, 100: 63, 200: 87, 300: 90}
    kept = sorted(weight[mask == 1].tolist())
    assert kept == pytest.approx((torch.arange(91, 101) / 100).tolist())  # the ten largest


def test_gmp_global_sparsity_takes_one_threshold_over_all_layers():
    model = nn.Sequential(linear([0.1, 0.2, 0.3, 0.4]), linear([1.0, 2.0, 3.0, 4.0]))
    pruner = GradualMagnitude(model, 0.5, start=0, end=0, every=1, global_sparsity=True)
    pruner.step(0)
    assert [layer.remaining() for layer in pruner.layers] == [0, 4]  # the small layer goes first
    per_layer = nn.Sequential(linear([0.1, 0.2, 0.3, 0.4]), linear([1.0, 2.0, 3.0, 4.0]))
    pruner = GradualMagnitude(per_layer, 0.5, start=0, end=0, every=1)
    pruner.step(0)
    assert [layer.remaining() for layer in pruner.layers] == [2, 2]


def test_magnitude_threshold_and_quality_for_density():
    values = [torch.tensor([0.4, -0.1, 0.3]), torch.tensor([-0.2])]
    assert magnitude_threshold(values, 0.5) == pytest.approx(0.2) and magnitude_threshold(values, 0.0) == -1.0
    _, std = weight_std(values)
    assert quality_for_density(values, 0.25) * std == pytest.approx(0.3)  # keeps |w| > 0.3: the 0.4 alone


def test_dns_without_splicing_refuses_min_remaining_which_splices():
    with pytest.raises(ValueError, match="splice=False never sets a mask back to 1"):
        Surgeon(nn.Sequential(linear([0.1, 0.2])), splice=False, min_remaining=0.1)


def test_one_module_takes_one_gradient_rule():
    layer = nn.Linear(2, 1)
    attach_masks(nn.Sequential(layer), {"0": layer}, False, straight_through=False)
    with pytest.raises(ValueError, match="has hard masks already"):
        from dns.masks import attach_mask
        attach_mask(layer, "bias")


def test_hard_masks_pass_the_gradient_times_the_mask_and_survive_a_copy():
    soft, hard = linear([1.0, 2.0, 3.0]), linear([1.0, 2.0, 3.0])
    mask = {"weight": torch.tensor([[1.0, 0.0, 1.0]])}
    attach_masks(nn.Sequential(soft), {"0": soft}, False, {"0.weight": mask["weight"]})
    attach_masks(nn.Sequential(hard), {"0": hard}, False, {"0.weight": mask["weight"]}, straight_through=False)
    for layer in (soft, hard, copy.deepcopy(hard)):
        layer(torch.ones(1, 3)).sum().backward()
    assert soft.weight_orig.grad.tolist() == [[1.0, 1.0, 1.0]]  # DNS: straight through
    assert hard.weight_orig.grad.tolist() == [[1.0, 0.0, 1.0]]
    assert copy.deepcopy(hard).__class__._dns_straight_through is False


@pytest.mark.parametrize("kwargs, message", [
    (dict(rounds=0), "rounds=0: must be an int >= 1"),
    (dict(quality=float("nan")), "quality=nan: must be a finite number >= 0"),
    (dict(quality_per_layer={"0": -1.0}), r"quality_per_layer\['0'\]=-1.0: must be a finite number >= 0"),
])
def test_han_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Han(nn.Sequential(linear([0.1, 0.2])), **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(final_sparsity=1.0, end=0), r"final_sparsity=1.0: must lie in \[initial_sparsity, 1\)"),
    (dict(initial_sparsity=0.5, final_sparsity=0.4, end=0), "final_sparsity=0.4: must lie in"),
    (dict(end=150, every=100), "end - start a multiple of every=100"),
    (dict(global_sparsity=True, final_sparsity_per_layer={"0": 0.5}, end=0), "drop final_sparsity_per_layer"),
])
def test_gmp_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradualMagnitude(nn.Sequential(linear([0.1, 0.2])), **kwargs)
