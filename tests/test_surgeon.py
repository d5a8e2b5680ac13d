import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dns.config import RunConfig
from dns.models import get_model
from dns.report import layer_rows, totals
from dns.layers import select_layers
from dns.surgeon import GateDraws, Surgeon
from dns.surgeon import surgery_phases
from dns.train import build_surgeon

KINDS = {"conv1": "conv", "conv2": "conv", "fc1": "fc", "fc2": "fc"}


@pytest.mark.parametrize("selection, expected", [
    ("all", ["conv1", "conv2", "fc1", "fc2"]),
    ("conv", ["conv1", "conv2"]),
    ("fc", ["fc1", "fc2"]),
    (["fc2", "conv1"], ["conv1", "fc2"]),  # forward order, whatever the order given
    (["conv", "fc2"], ["conv1", "conv2", "fc2"]),
])
def test_select_layers(selection, expected):
    assert select_layers(selection, KINDS) == expected


def test_select_layers_refuses_unknown_names():
    with pytest.raises(ValueError, match="'fc3' matches no layer"):
        select_layers(["fc1", "fc3"], KINDS)


def one_layer(weight, bias):
    model = nn.Sequential(nn.Linear(len(weight), 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([weight]))
        model[0].bias.copy_(torch.tensor([bias]))
    return model


def test_thresholds_come_from_weights_and_biases_and_prune_then_splice_back():
    model = one_layer([0.5, 1.0, 2.0, 4.0], 0.0)
    surgeon = Surgeon(model, c=0.0, iter_stop=100, gamma=0.0)  # gamma 0: the gate always opens
    layer = surgeon.layers[0]
    assert layer.mu == pytest.approx(1.875)  # mean of 0.5, 1, 2, 4 (the zero bias is left out)
    assert layer.sigma == pytest.approx(math.sqrt((0.25 + 1 + 4 + 16) / 4 - 1.875 ** 2))
    assert (layer.a, layer.b) == (pytest.approx(0.9 * 1.875), pytest.approx(1.1 * 1.875))

    assert surgeon.step(0) == 1
    assert layer.mask("weight").tolist() == [[0.0, 0.0, 1.0, 1.0]]  # 2.0 sits in (a, b]: kept
    assert layer.mask("bias").tolist() == [0.0]
    assert (layer.pruned, layer.spliced) == (3, 0)

    with torch.no_grad():
        layer.params["weight"][0, 0] = 2.1  # grows past b = 2.0625
        layer.params["weight"][0, 1] = 2.0  # into the band: a pruned weight stays pruned
    surgeon.step(1)
    assert layer.mask("weight").tolist() == [[1.0, 0.0, 1.0, 1.0]]
    assert (layer.pruned, layer.spliced) == (3, 1)


def test_a_pruned_weight_learns_its_way_back():
    """Straight-through training grows a pruned weight past b, and the next surgery splices it back."""
    model = one_layer([0.05, 1.0, 1.0, 1.0], 0.0)
    surgeon = Surgeon(model, c=0.0, iter_stop=1000, gamma=0.0)  # thresholds a = 0.77, b = 0.94 (mu = 0.7625, sigma = 0.411)
    layer = surgeon.layers[0]
    surgeon.step(0)
    assert layer.mask("weight")[0, 0] == 0  # 0.05 is pruned at once
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.eye(4)
    y = torch.tensor([[2.0], [1.0], [1.0], [1.0]])  # the data wants the first weight at 2
    for i in range(1, 200):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        surgeon.step(i)
        if layer.mask("weight")[0, 0] == 1:
            break
    assert layer.mask("weight")[0, 0] == 1 and layer.spliced >= 1
    assert layer.params["weight"][0, 0] > layer.b


def test_the_gate_follows_sigma_and_stops_at_iter_stop():
    model = one_layer([1.0, 2.0], 0.5)
    surgeon = Surgeon(model, c=1.0, iter_stop=3000, gamma=1e-3, power=1.0, seed=7)
    updates = sum(surgeon.step(i) for i in range(4000))
    expected = sum((1 + 1e-3 * i) ** -1 for i in range(3000))  # ≈ 1386
    assert abs(updates - expected) < 5 * math.sqrt(expected)
    assert sum(surgeon.step(i) for i in range(3000, 3500)) == 0  # frozen from iter_stop on


def test_gate_draws_are_those_of_one_call_per_draw_and_resume_mid_block():
    expected = torch.Generator().manual_seed(7)
    one_by_one = [torch.rand(1, generator=expected).item() for _ in range(2500)]
    draws = GateDraws(7)
    taken = [x for n in [3] * 500 for x in draws.take(n)]  # crosses two block boundaries
    assert taken == one_by_one[:1500]
    resumed = GateDraws(0)
    resumed.load_state_dict(draws.state_dict())  # 1500 = 1024 + 476 used
    assert resumed.take(1000) == one_by_one[1500:2500]
    legacy = GateDraws(0)  # a checkpoint that kept the generator's state alone
    legacy.load_state_dict(torch.Generator().manual_seed(7).get_state())
    assert legacy.take(4) == one_by_one[:4]


def test_layers_outside_the_selection_keep_their_masks():
    model = get_model("lenet5")
    surgeon = Surgeon(model, c=2.0, layers=["fc1"], iter_stop=10, gamma=0.0)
    surgeon.step(0)
    by_name = {layer.name: layer for layer in surgeon.layers}
    assert by_name["fc1"].remaining() < by_name["fc1"].param_count()
    for name in ("conv1", "conv2", "fc2"):
        assert by_name[name].remaining() == by_name[name].param_count() and by_name[name].a is None


def set_masks(surgeon, kept):
    """Keep the first kept[name] = (weights, biases) entries of each layer."""
    for layer in surgeon.layers:
        for key, count in zip(("weight", "bias"), kept[layer.name]):
            if key in layer.keys:
                flat = layer.mask(key).view(-1)
                flat.zero_()
                flat[:count] = 1


def test_compression_counts_kept_parameters_with_and_without_biases():
    surgeon = Surgeon(get_model("lenet5"), layers=[])
    set_masks(surgeon, {"conv1": (72, 2), "conv2": (770, 9), "fc1": (2920, 3), "fc2": (215, 2)})
    total = totals(layer_rows(surgeon))
    # the authors' released sparse LeNet-5: 3,993 of 431,080 parameters, 3,977 of 430,500 weights
    assert (total["params"], total["remaining"]) == (431080, 3993)
    assert total["compression"] == pytest.approx(107.96, abs=0.01)
    assert (total["weight_params"], total["weight_remaining"]) == (430500, 3977)
    assert total["weight_compression"] == pytest.approx(108.25, abs=0.01)


def test_unmasked_biases_count_in_full():
    surgeon = Surgeon(get_model("lenet300"), layers=[], prune_bias=False)
    assert all(layer.keys == ("weight",) for layer in surgeon.layers)
    set_masks(surgeon, {"fc1": (4351, 0), "fc2": (552, 0), "fc3": (49, 0)})
    total = totals(layer_rows(surgeon))
    assert total["remaining"] == 4952 + 410 and total["weight_remaining"] == 4952


def lenet5_config(**surgery) -> RunConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), {
        "model": {"name": "lenet5"}, "dataset": {"name": "mnist"}, "optimizer": {}, "lr_policy": {},
        "surgery": surgery}))


def begin(surgeon, phase):
    surgeon.begin_phase(phase.c, phase.iter_stop, phase.gamma, phase.power)


def test_per_layer_c_and_iter_stop_override_the_defaults():
    cfg = lenet5_config(iters=500, c=1.5, c_per_layer={"fc1": 4.0}, iter_stop_per_layer={"fc1": 300},
                        layers=["conv2", "fc"])
    [phase] = surgery_phases(cfg, KINDS)
    surgeon = build_surgeon(get_model("lenet5"), cfg, phase, None)
    settings = {layer.name: (layer.c, layer.iter_stop) for layer in surgeon.layers if layer.under_surgery}
    assert settings == {"conv2": (1.5, 500), "fc1": (4.0, 300), "fc2": (1.5, 500)}
    assert surgeon.active == {"conv2", "fc1", "fc2"}


def test_phases_follow_each_other_and_the_most_specific_setting_wins():
    cfg = lenet5_config(c=1.5, gamma=1e-4, c_per_layer={"fc2": 3.0}, phases=[
        {"layers": "conv", "iters": 300, "c": 0.5},
        {"layers": ["fc1", "fc2"], "iters": 200, "iter_stop": 150, "gamma": 0.0, "c_per_layer": {"fc1": 4.0}}])
    first, second = surgery_phases(cfg, KINDS)
    assert (first.first, first.iters, second.first, second.iters) == (0, 300, 300, 200)
    assert first.c == {"conv1": 0.5, "conv2": 0.5} and first.iter_stop == {"conv1": 300, "conv2": 300}
    assert second.c == {"fc1": 4.0, "fc2": 3.0} and second.iter_stop == {"fc1": 150, "fc2": 150}
    assert (first.gamma, second.gamma, first.label) == (1e-4, 0.0, "conv1,conv2")


def test_a_phase_operates_on_its_layers_and_leaves_the_others_masks_as_they_were():
    torch.manual_seed(0)
    model = get_model("lenet5")
    surgeon = Surgeon(model, layers=[], gamma=0.0)  # gamma 0: the gate is always open
    conv, fc = surgery_phases(lenet5_config(c=1.0, phases=[{"layers": "conv", "iters": 5},
                                                           {"layers": "fc", "iters": 5}]), KINDS)
    begin(surgeon, conv)
    surgeon.step(0)
    by_name = {layer.name: layer for layer in surgeon.layers}
    assert all(by_name[n].remaining() < by_name[n].param_count() for n in ("conv1", "conv2"))
    assert all(by_name[n].remaining() == by_name[n].param_count() and by_name[n].a is None for n in ("fc1", "fc2"))
    conv_masks = {n: by_name[n].mask("weight").clone() for n in ("conv1", "conv2")}
    conv_thresholds = {n: (by_name[n].a, by_name[n].b) for n in ("conv1", "conv2")}

    begin(surgeon, fc)
    with torch.no_grad():  # weights move on while the conv masks are frozen: they must not follow
        for n in ("conv1", "conv2"):
            by_name[n].params["weight"].mul_(3.0)
    for i in range(3):
        surgeon.step(i)
    assert all(by_name[n].remaining() < by_name[n].param_count() for n in ("fc1", "fc2"))
    for n in ("conv1", "conv2"):
        assert torch.equal(by_name[n].mask("weight"), conv_masks[n])
        assert (by_name[n].a, by_name[n].b) == conv_thresholds[n]


def test_keep_largest_restores_the_largest_weights_only_when_too_few_remain():
    from dns.surgeon import keep_largest_

    weight = torch.tensor([[0.1, -0.9, 0.3], [0.05, 0.7, -0.2]])
    mask = torch.zeros_like(weight)
    assert keep_largest_(weight, mask, 2) == 2
    assert mask.tolist() == [[0, 1, 0], [0, 1, 0]]  # |-0.9| and 0.7
    mask = torch.tensor([[1.0, 0, 1], [1, 0, 0]])
    assert keep_largest_(weight, mask, 2) == 0  # three remain already: untouched
    assert mask.tolist() == [[1, 0, 1], [1, 0, 0]]


def test_min_remaining_keeps_a_layer_from_being_cut():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 10))
    surgeon = Surgeon(model, c=50.0, iter_stop=10, gamma=0.0, min_remaining=0.05)
    surgeon.step(0)
    layer = surgeon.layers[0]
    assert layer.remaining(("weight",)) == 10  # ceil(5 % of 200); c = 50 alone would cut all
    kept = layer.mask("weight").bool()
    assert layer.params["weight"].abs()[kept].min() >= layer.params["weight"].abs()[~kept].max()


def test_an_evaluation_changes_no_mask_weight_or_mode(data_root):
    """The MNIST evaluation dns-train runs between iterations, on a model mid-surgery with a surgeon attached."""
    from dns.config import DatasetConfig
    from dns.evaluate import evaluator

    torch.manual_seed(0)
    model = get_model("lenet5")
    surgeon = Surgeon(model, c=1.0, gamma=0.0)
    surgeon.start()
    surgeon.step(0)  # masks with zeros (the gate always opens at gamma 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.endswith("_mask") and (v == 0).any() for k, v in before.items())
    errors = evaluator(DatasetConfig(name="mnist", root=str(data_root)), torch.device("cpu"))(model)
    assert 0 < errors["top1"] < 1 and model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
