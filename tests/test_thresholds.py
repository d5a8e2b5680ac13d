import math

import pytest
import torch

from dns.thresholds import gate_open, magnitude_stats, surgery_probability, thresholds, update_mask


def test_stats_pool_weights_and_biases_over_nonzero_magnitudes():
    # |w| over the non-zero entries of W and b together: 1, 2, 3, 4 (the 0 is left out)
    mu, sigma = magnitude_stats([torch.tensor([[0.0, 1.0], [-2.0, 3.0]]), torch.tensor([-4.0])])
    assert mu == pytest.approx(2.5)
    assert sigma == pytest.approx(math.sqrt(7.5 - 2.5 ** 2))  # population std of |w|: sqrt(1.25)


def test_stats_of_an_all_zero_layer_are_zero():
    assert magnitude_stats([torch.zeros(3, 3)]) == (0.0, 0.0)


def test_thresholds_surround_mu_plus_c_sigma_by_the_margin():
    a, b = thresholds(mu=2.5, sigma=0.5, c=2.0, margin=0.1)
    assert (a, b) == (pytest.approx(0.9 * 3.5), pytest.approx(1.1 * 3.5))
    a, b = thresholds(mu=2.5, sigma=0.5, c=2.0, margin=0.0)
    assert a == b == pytest.approx(3.5)


def test_threshold_is_clamped_at_zero_for_negative_c():
    assert thresholds(mu=1.0, sigma=2.0, c=-1.0, margin=0.1) == (0.0, 0.0)


def test_update_mask_prunes_at_or_below_a_splices_above_b_and_keeps_the_band():
    w = torch.tensor([0.1, -0.9, 0.95, 1.0, -1.05, 1.1, 1.2, -0.5])
    t = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    new = update_mask(w, t, a=0.9, b=1.1)
    # 0.1 and |-0.9| <= a: pruned; 0.95, 1.0, |-1.05|, 1.1 in (a, b]: unchanged; 1.2 > b: spliced
    assert new.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert new.dtype == t.dtype and t.tolist()[0] == 1.0  # pure: the input mask is untouched


def test_surgery_probability_follows_the_power_law():
    assert surgery_probability(0, 1e-4, 1.0) == 1.0
    assert surgery_probability(10000, 1e-4, 1.0) == pytest.approx(0.5)
    assert surgery_probability(14000, 1e-4, 1.0) == pytest.approx(1 / 2.4)
    assert surgery_probability(10000, 1e-4, 2.0) == pytest.approx(0.25)


def test_gate_opens_when_sigma_beats_the_draw_and_before_iter_stop():
    assert gate_open(10000, draw=0.49, gamma=1e-4, power=1.0, iter_stop=20000)
    assert not gate_open(10000, draw=0.51, gamma=1e-4, power=1.0, iter_stop=20000)
    assert gate_open(4, draw=0.3, gamma=1e-4, power=1.0, iter_stop=5)
    assert not gate_open(5, draw=0.0, gamma=1e-4, power=1.0, iter_stop=5)  # frozen from iter_stop on
