import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from dns.masks import attach_mask, attach_masks, mask_state_dict, plain_state_dict
from dns.thresholds import update_mask


def linear(weight, bias=(0.0, 0.0)):
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def test_forward_uses_the_masked_weight():
    layer = linear([[1.0, 2.0], [3.0, 4.0]], bias=[0.5, -0.5])
    attach_mask(layer, "weight", torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    attach_mask(layer, "bias", torch.tensor([0.0, 1.0]))
    out = layer(torch.tensor([[1.0, 1.0]]))
    assert out.tolist() == [[1.0, 3.5]]  # [1·1 + 0, 4·1 - 0.5]


def seen_weight(layer):
    """The weight matrix the forward pass of a bias-free 2x2 `layer` sees (no autograd: W is shown back)."""
    with torch.no_grad():
        return (layer(torch.eye(2)) - layer.bias).T.tolist()


def test_forward_follows_the_mask_changed_in_place_or_loaded():
    layer = linear([[1.0, -2.0], [3.0, 4.0]])
    mask = attach_mask(layer, "weight", torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert seen_weight(layer) == [[1.0, 0.0], [0.0, 4.0]]
    mask.copy_(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))  # what the surgeon does
    assert seen_weight(layer) == [[0.0, -2.0], [3.0, 4.0]]
    state = layer.state_dict()
    state["weight_mask"] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    layer.load_state_dict(state)  # what resuming from a checkpoint does
    assert seen_weight(layer) == [[1.0, -2.0], [0.0, 0.0]]


def test_the_parameter_holds_the_dense_weight_outside_forward_and_backward():
    layer = linear([[1.0, -2.0], [3.0, 4.0]])
    attach_mask(layer, "weight", torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert layer.weight.tolist() == [[1.0, -2.0], [3.0, 4.0]]
    out = layer(torch.tensor([[1.0, 1.0]]))
    assert layer.weight.tolist() == [[1.0, 0.0], [0.0, 4.0]]  # between forward and backward: W ⊙ T
    out.sum().backward()
    assert layer.weight.tolist() == [[1.0, -2.0], [3.0, 4.0]]  # shown back once its gradient is in
    assert "weight_mask" in layer.state_dict() and layer.state_dict()["weight"].tolist() == [[1.0, -2.0], [3.0, 4.0]]


def test_a_forward_under_inference_mode_leaves_the_layer_trainable():
    layer = linear([[1.0, -2.0], [3.0, 4.0]])
    attach_mask(layer, "weight", torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    with torch.inference_mode():  # the first forward ever: the tensor for W ⊙ T is made here
        assert layer(torch.tensor([[1.0, 1.0]])).tolist() == [[1.0, 4.0]]
    assert layer.weight.tolist() == [[1.0, -2.0], [3.0, 4.0]]
    layer(torch.tensor([[1.0, 1.0]])).sum().backward()
    assert layer.weight.grad.tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_backward_is_straight_through_to_masked_weights():
    layer = linear([[1.0, 2.0], [3.0, 4.0]])
    attach_mask(layer, "weight", torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    layer(torch.tensor([[2.0, 3.0]])).sum().backward()
    # dL/d(W ⊙ T) = x for every row, and W receives it at masked positions too
    assert layer.weight.grad.tolist() == [[2.0, 3.0], [2.0, 3.0]]

    # torch.nn.utils.prune's rule, for contrast: masked entries get no gradient, so they could never return
    other = linear([[1.0, 2.0], [3.0, 4.0]])
    prune.custom_from_mask(other, "weight", torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    other(torch.tensor([[2.0, 3.0]])).sum().backward()
    assert other.weight_orig.grad.tolist() == [[2.0, 0.0], [0.0, 3.0]]


def test_optimizer_keeps_updating_pruned_weights():
    layer = linear([[1.0, 2.0], [3.0, 4.0]])
    attach_mask(layer, "weight", torch.zeros(2, 2))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(torch.tensor([[2.0, 3.0]])).sum().backward()
    optimizer.step()
    assert layer.weight.tolist() == [[0.0, 0.5], [2.0, 2.5]]


def test_state_dicts_use_plain_names_and_bool_masks():
    model = nn.Sequential(linear([[1.0, 2.0], [3.0, 4.0]]))
    live = attach_masks({"0": model[0]}, prune_bias=False,
                        initial={"0.weight": torch.tensor([[1.0, 0.0], [1.0, 1.0]])})
    assert list(live["0"]) == ["weight"]
    plain = plain_state_dict(model)
    assert sorted(plain) == ["0.bias", "0.weight"]
    assert plain["0.weight"].tolist() == [[1.0, 2.0], [3.0, 4.0]]  # dense W, masked entries kept
    masks = mask_state_dict(model)
    assert list(masks) == ["0.weight"] and masks["0.weight"].dtype == torch.bool
    assert masks["0.weight"].tolist() == [[True, False], [True, True]]
    fresh = nn.Sequential(nn.Linear(2, 2))
    fresh.load_state_dict(plain)  # loads into the unmodified model


def weight_seen_by_forward(layer: nn.Module) -> torch.Tensor:
    """The weight that a no-grad forward of `layer` computes with."""
    seen = []
    hook = layer.register_forward_pre_hook(lambda module, inputs: seen.append(module.weight.detach().clone()))
    with torch.no_grad():
        layer(torch.zeros(1, layer.in_features, dtype=layer.weight.dtype))
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64: the torch ops instead of numba's passes
def test_the_forward_sees_w_times_t_through_updates_training_and_outside_changes(dtype, monkeypatch):
    import dns.masks

    monkeypatch.setattr(dns.masks, "CHANGES", 50)  # so that some updates change too much to be merged
    calls = {"rule_pass": 0, "rule_pass_kept": 0, "merge_changes": 0}
    for name in calls:
        def counted(*args, kernel=getattr(dns.kernels, name), name=name):
            calls[name] += 1
            return kernel(*args)
        monkeypatch.setattr(dns.kernels, name, counted)
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(300, 200).to(dtype)
    mask = attach_mask(layer, "weight")
    handle = layer.dns_masks["weight"]
    t = mask.clone()
    seen_sparse = False
    for step, (a, b) in enumerate([(0.0, 0.0), (0.08, 0.09), (0.08, 0.09), (0.085, 0.09), (0.01, 0.02)] * 3):
        with torch.no_grad():
            layer.weight.add_(0.003 * torch.randn(layer.weight.shape, generator=gen, dtype=dtype))  # training
        if step == 7:
            mask.view(-1)[:10] = 1.0  # changed in place, not by an update
            t.view(-1)[:10] = 1.0
        expected = update_mask(layer.weight, t, a, b)
        pruned, spliced = handle.update(a, b)
        assert (pruned, spliced) == (int(((t == 1) & (expected == 0)).sum()), int(((t == 0) & (expected == 1)).sum()))
        t = expected
        assert torch.equal(mask, t)
        assert torch.equal(weight_seen_by_forward(layer), layer.weight * t)
        seen_sparse |= int(t.sum()) * dns.masks.SPARSE <= t.numel()
    assert seen_sparse
    if dtype == torch.float32:  # every path of numba's: merged, overflowed, rebuilt after an outside change
        assert all(count >= 2 for count in calls.values()), calls
