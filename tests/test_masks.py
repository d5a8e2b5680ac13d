"""Masks that cannot corrupt a model: the forward is exactly W ⊙ T and W gets the full gradient of W ⊙ T, in
every way a training loop may use a layer. Each case runs on a conv and a linear layer and is checked
against a twin: a plain layer whose weights are W ⊙ T, which is what the masked layer must behave as."""

import copy

import pytest
import torch
from torch import nn

from dns.masks import (attach_mask, dense, load_masks, mask_of, mask_state_dict, plain_state_dict, remove_masks,
                       update_mask_)
from dns.surgeon import Surgeon
from dns.thresholds import update_mask

KINDS = ["linear", "conv"]


def make(kind: str, seed: int = 0):
    """(masked layer, an input batch that needs a gradient, the layer's masks): about half the entries pruned,
    negative weights among them."""
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(6, 4) if kind == "linear" else nn.Conv2d(2, 3, 3)
    x = torch.randn(5, 6, generator=gen) if kind == "linear" else torch.randn(5, 2, 5, 5, generator=gen)
    masks = {}
    for key in ("weight", "bias"):
        masks[key] = (torch.rand(getattr(layer, key).shape, generator=gen) < 0.5).float()
        attach_mask(layer, key, masks[key])
    return layer, x.requires_grad_(), masks


def twin(layer: nn.Module) -> nn.Module:
    """A plain copy of `layer` whose parameters are W ⊙ T: what the masked layer must compute."""
    plain = remove_masks(copy.deepcopy(layer))
    for p in plain.parameters():
        p.grad = None
    return plain


def weight_grad(layer):
    return dense(layer, "weight").grad


@pytest.mark.parametrize("kind", KINDS)
def test_the_forward_is_w_times_t_bit_for_bit_and_the_backward_straight_through(kind):
    layer, x, masks = make(kind)
    w = dense(layer, "weight").detach().clone()
    seen = layer.weight.detach()
    assert torch.equal(seen.view(torch.int32), (w * masks["weight"]).view(torch.int32))  # -0.0 where w < 0 pruned
    plain = twin(layer)
    out, expected = layer(x), plain(x.detach().requires_grad_())
    assert torch.equal(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    assert torch.equal(weight_grad(layer), plain.weight.grad)  # the gradient of W ⊙ T, pruned entries included
    assert (weight_grad(layer)[masks["weight"] == 0] != 0).any()
    assert torch.equal(dense(layer, "bias").grad, plain.bias.grad)


@pytest.mark.parametrize("kind", KINDS)
def test_1_two_forwards_before_their_backwards_and_a_kept_graph(kind):
    layer, x, _ = make(kind)
    plain = twin(layer)
    x2 = (2 * x).detach().requires_grad_()
    y1, y2 = layer(x), layer(x2)
    y2.square().sum().backward(retain_graph=True)
    y1.square().sum().backward()
    y2.square().sum().backward()  # the kept graph, a second time
    px, px2 = x.detach().requires_grad_(), x2.detach().requires_grad_()
    p1, p2 = plain(px), plain(px2)
    (p2.square().sum() * 2 + p1.square().sum()).backward()
    assert torch.allclose(x.grad, px.grad) and torch.allclose(x2.grad, px2.grad)
    assert torch.allclose(weight_grad(layer), plain.weight.grad)


@pytest.mark.parametrize("kind", KINDS)
def test_2_a_forward_without_backward_never_touches_the_dense_weights(kind):
    layer, x, masks = make(kind)
    w = dense(layer, "weight").detach().clone()
    layer(x).sum()  # a validation loss computed with autograd on, never backpropagated
    torch.autograd.grad(layer(x).sum(), x)  # autograd.grad: no parameter gradient
    layer(x).sum().backward(inputs=[x])  # backward(inputs=...)
    assert torch.equal(dense(layer, "weight"), w) and weight_grad(layer) is None
    state = layer.state_dict()
    assert torch.equal(state["weight_orig"], w)  # pruned values kept: they can come back
    assert torch.equal(plain_state_dict(layer)["weight"], w) and (w[masks["weight"] == 0] != 0).all()
    dense(layer, "weight").requires_grad_(False)  # a frozen parameter
    layer(x).sum().backward()
    assert weight_grad(layer) is None and torch.equal(dense(layer, "weight"), w)
    assert dense(layer, "bias").grad is not None


@pytest.mark.parametrize("kind", KINDS)
def test_3_an_exception_inside_a_forward_leaves_nothing_behind(kind):
    layer, x, masks = make(kind)
    w = dense(layer, "weight").detach().clone()
    with torch.no_grad(), pytest.raises(RuntimeError):
        layer(torch.randn(3, 7, 7, 7))  # wrong input shape
    assert torch.equal(dense(layer, "weight"), w)
    assert torch.equal(layer(x), twin(layer)(x))


@pytest.mark.parametrize("kind", KINDS)
def test_4_a_parameter_tied_across_two_modules_is_refused(kind):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)) if kind == "linear" else \
        nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))
    model[1].weight = model[0].weight
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"0.weight and 1.weight are one tied tensor"):
        Surgeon(model)
    assert list(model.state_dict()) == list(before)  # refused before anything was masked
    shared = nn.Linear(4, 4)  # one module used twice is no tie: one mask serves both uses
    Surgeon(nn.Sequential(shared, nn.ReLU(), shared))


@pytest.mark.parametrize("kind", KINDS)
def test_5_double_after_the_first_forward(kind):
    layer, x, _ = make(kind)
    layer(x).sum().backward()
    plain = twin(layer).double()
    layer.double()
    xd = x.detach().double()
    assert dense(layer, "weight").dtype == mask_of(layer, "weight").dtype == torch.float64
    assert torch.equal(layer(xd), plain(xd))
    update_mask_(dense(layer, "weight"), mask_of(layer, "weight"), 0.1, 0.2)  # the rule in torch ops, off float32
    assert torch.equal(layer.weight, dense(layer, "weight") * mask_of(layer, "weight"))


def train_three_steps(layer, x, forward):
    """Three SGD steps, the masks changed after the first; returns the losses and the final dense weights."""
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(3):
        if step == 1:
            mask_of(layer, "weight").copy_(1 - mask_of(layer, "weight"))
        loss = forward(x[step::3]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, dense(layer, "weight").detach().clone()


@pytest.mark.parametrize("kind", KINDS)
def test_6_compiled_with_aot_eager_follows_a_mask_change_like_eager(kind):
    layer, x, _ = make(kind)
    x = torch.cat([x.detach()] * 2)
    compiled = copy.deepcopy(layer)
    eager_losses, eager_weight = train_three_steps(layer, x, layer)
    losses, weight = train_three_steps(compiled, x, torch.compile(compiled, backend="aot_eager"))
    assert losses == eager_losses and torch.equal(weight, eager_weight)


def test_compiled_with_the_default_backend_matches_eager_over_three_steps_with_a_mask_change():
    torch._dynamo.reset()
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))
    Surgeon(model, c=0.0, gamma=0.0).step()
    x = torch.randn(12, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    compiled = copy.deepcopy(model)
    initial = {k: v.clone() for k, v in plain_state_dict(model).items()}

    def run(module, forward):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        losses = []
        for step in range(3):
            if step == 1:
                for name in ("0", "3"):
                    mask = mask_of(module.get_submodule(name), "weight")
                    mask.copy_(1 - mask)
            loss = forward(x[step::3]).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses, plain_state_dict(module)

    eager_losses, eager_state = run(model, model)
    losses, state = run(compiled, torch.compile(compiled))
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    assert all(torch.allclose(state[k], eager_state[k], atol=1e-6) for k in eager_state)
    assert all(not torch.equal(state[k], initial[k]) for k in initial)  # every tensor trained


@pytest.mark.parametrize("kind", KINDS)
def test_7_a_mask_change_between_two_forwards_inside_one_autocast_region(kind):
    layer, x, _ = make(kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = layer(x)
        mask_of(layer, "weight").copy_(1 - mask_of(layer, "weight"))
        second = layer(x)
        expected = twin(layer)(x)
    assert torch.equal(second, expected) and not torch.equal(first, second)


@pytest.mark.parametrize("kind", KINDS)
def test_8_a_surgery_step_between_two_live_forwards(kind):
    layer, x, masks = make(kind)
    before = twin(layer)
    x2 = (x + 1).detach().requires_grad_()
    y1 = layer(x)
    update_mask_(dense(layer, "weight"), mask_of(layer, "weight"), 0.15, 0.2)  # the surgery changes the mask
    assert not torch.equal(mask_of(layer, "weight"), masks["weight"])
    after = twin(layer)
    y2 = layer(x2)
    (y1.square().sum() + y2.square().sum()).backward()
    px, px2 = x.detach().requires_grad_(), x2.detach().requires_grad_()
    before(px).square().sum().backward()
    after(px2).square().sum().backward()
    assert torch.allclose(x.grad, px.grad) and torch.allclose(x2.grad, px2.grad)  # each with its own mask
    assert torch.allclose(weight_grad(layer), before.weight.grad + after.weight.grad)


@pytest.mark.parametrize("kind", KINDS)
def test_four_accumulated_micro_batches_equal_one_step_on_the_whole_batch(kind):
    layer, x, _ = make(kind)
    x = torch.cat([x.detach()] * 4)
    whole = copy.deepcopy(layer)
    whole(x).square().mean().backward()
    for part in x.chunk(4):
        (layer(part).square().mean() / 4).backward()
    assert torch.allclose(weight_grad(layer), weight_grad(whole), atol=1e-6)
    assert torch.allclose(dense(layer, "bias").grad, dense(whole, "bias").grad, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_gives_the_straight_through_gradient(kind):
    layer, x, masks = make(kind)
    plain = twin(layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = layer(x), plain(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    out.float().square().sum().backward()
    expected.float().square().sum().backward()
    assert weight_grad(layer).dtype == torch.float32
    assert torch.equal(weight_grad(layer), plain.weight.grad)
    assert (weight_grad(layer)[masks["weight"] == 0] != 0).any()


def test_masks_follow_the_module_to_another_dtype_and_state_dicts_load_back():
    layer, x, masks = make("linear")
    state = layer.state_dict()
    assert list(state) == ["weight_orig", "bias_orig", "weight_mask", "bias_mask"]  # torch.nn.utils.prune's names
    fresh, _, _ = make("linear", seed=1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), layer(x))
    assert {k: v.tolist() for k, v in mask_state_dict(layer).items()} == \
        {k: v.bool().tolist() for k, v in masks.items()}
    plain = nn.Linear(6, 4)
    plain.load_state_dict(plain_state_dict(layer))  # dense W under plain names
    assert torch.equal(plain.weight, dense(layer, "weight"))
    load_masks(fresh, {"weight": torch.ones(4, 6, dtype=torch.bool)})
    assert torch.equal(fresh.weight, dense(fresh, "weight"))
    with pytest.raises(KeyError, match="no masked parameter named fc9.weight"):
        load_masks(fresh, {"fc9.weight": torch.ones(1)})


def test_remove_masks_bakes_w_times_t_into_the_same_parameters():
    layer, x, masks = make("conv")
    weight = dense(layer, "weight")
    expected = layer(x).detach()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    remove_masks(layer)
    assert type(layer) is nn.Conv2d
    assert layer.weight is weight and torch.equal(layer(x), expected)
    assert list(layer.state_dict()) == ["weight", "bias"]
    layer(x).sum().backward()
    optimizer.step()  # the optimizer still holds the model's parameters


def test_a_masked_model_pickles_and_copies_with_classes_of_their_own(tmp_path):
    layer, x, _ = make("conv")
    torch.save(layer, tmp_path / "layer.pt")
    loaded = torch.load(tmp_path / "layer.pt", weights_only=False)
    copied = copy.deepcopy(layer)
    for other in (loaded, copied):
        assert type(other) is not type(layer) and type(other).__name__ == "MaskedConv2d"
        assert torch.equal(other(x), layer(x))
    remove_masks(copied)  # removing the copy's masks leaves the original masked
    assert list(layer.state_dict()) == ["weight_orig", "bias_orig", "weight_mask", "bias_mask"]
    assert torch.equal(layer(x), loaded(x))


def test_a_parameter_is_masked_once():
    layer, _, _ = make("linear")
    with pytest.raises(ValueError, match="already masked"):
        attach_mask(layer, "weight")


def rule_case(seed: int, dtype):
    """Weights with entries exactly at ±a, ±b and 0, and a 0/1 mask."""
    gen = torch.Generator().manual_seed(seed)
    a, b = 0.1, 0.7  # 0.1 rounds up in float32: a float64 comparison would differ at w = float32(0.1)
    weight = torch.randn(40, 30, generator=gen).to(dtype)
    weight[0, :5] = torch.tensor([a, -a, b, 0.0, -b], dtype=dtype)
    mask = (torch.rand(40, 30, generator=gen) < 0.5).to(dtype)
    mask[0, :5] = 1.0
    return weight, mask, a, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float32: numba's pass; float64: torch ops
@pytest.mark.parametrize("seed", range(3))
def test_the_mask_update_is_the_rule_and_counts_its_changes(seed, dtype):
    weight, mask, a, b = rule_case(seed, dtype)
    expected = update_mask(weight, mask, a, b)
    assert expected[0, :5].tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]
    pruned, spliced = int(((mask == 1) & (expected == 0)).sum()), int(((mask == 0) & (expected == 1)).sum())
    assert pruned > 0 and spliced > 0
    assert update_mask_(weight, mask, a, b) == (pruned, spliced)
    assert torch.equal(mask, expected)
