import pytest

from dns.layers import per_layer, select_layers, specificity

# the prunable layers of a CIFAR ResNet with one block per stage and a torchvision-style downsample path
KINDS = {"conv1": "conv", "layer1.0.conv1": "conv", "layer1.0.conv2": "conv", "layer2.0.conv1": "conv",
         "layer2.0.conv2": "conv", "layer2.0.downsample.0": "conv", "layer3.0.conv1": "conv",
         "layer3.0.conv2": "conv", "layer3.0.downsample.0": "conv", "fc": "fc"}
NAMES = list(KINDS)


@pytest.mark.parametrize("selection, exclude, expected", [
    ("all", [], NAMES),
    ("fc", [], ["fc"]),
    (["layer3.*"], [], ["layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0"]),
    (["*.downsample.*", "conv1"], [], ["conv1", "layer2.0.downsample.0", "layer3.0.downsample.0"]),
    ("all", ["conv1", "fc"], NAMES[1:-1]),  # the first and last layer kept dense, as pruning papers often do
    ("conv", ["*.downsample.*"], ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
                                  "layer3.0.conv1", "layer3.0.conv2"]),
    (["layer?.0.conv2"], [], ["layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2"]),
    (["fc", "conv1"], "all", []),
])
def test_select_layers_by_kind_name_and_pattern(selection, exclude, expected):
    assert select_layers(selection, KINDS, exclude) == expected


@pytest.mark.parametrize("selection, exclude, message", [
    (["layer4.*"], [], r"layers: 'layer4.\*' matches no layer; layers are conv1, layer1.0.conv1, "),
    ("all", ["conv9"], r"exclude: 'conv9' matches no layer"),
    (["layer3"], [], r"'layer3' matches no layer"),  # a module holding layers is no layer: layer3.* picks them
])
def test_a_selection_that_picks_nothing_is_an_error(selection, exclude, message):
    with pytest.raises(ValueError, match=message):
        select_layers(selection, KINDS, exclude)


def test_the_most_specific_key_wins():
    values = {"layer3.*": 2.0, "*.downsample.*": 0.5, "layer3.0.downsample.0": 0.25, "conv1": 9.0, "*": 1.0}
    c = per_layer("c_per_layer", values, NAMES)
    assert c == {"conv1": 9.0, "layer1.0.conv1": 1.0, "layer1.0.conv2": 1.0, "layer2.0.conv1": 1.0,
                 "layer2.0.conv2": 1.0, "layer2.0.downsample.0": 0.5, "layer3.0.conv1": 2.0, "layer3.0.conv2": 2.0,
                 "layer3.0.downsample.0": 0.25, "fc": 1.0}
    # order does not matter: the same map given the other way round resolves the same
    assert per_layer("c_per_layer", dict(reversed(list(values.items()))), NAMES) == c
    assert specificity("conv1") > specificity("*.downsample.*") > specificity("layer3.*") > specificity("*")


def test_per_layer_refuses_keys_that_match_nothing_and_equal_ties_that_disagree():
    with pytest.raises(ValueError, match=r"iter_stop_per_layer: 'layer9.\*' matches no layer"):
        per_layer("iter_stop_per_layer", {"layer9.*": 5}, NAMES)
    with pytest.raises(ValueError, match=r"'layer3\*' and '\*.conv1' both match 'layer3.0.conv1' as closely and "
                                         r"disagree \(2.0 against 3.0\); add an entry for 'layer3.0.conv1' itself"):
        per_layer("c_per_layer", {"layer3*": 2.0, "*.conv1": 3.0}, NAMES)  # 6 literal characters each
    # equally specific keys that agree are fine, and an entry for the layer itself settles a tie
    assert per_layer("c", {"layer3*": 2.0, "*.conv1": 2.0}, NAMES)["layer3.0.conv1"] == 2.0
    assert per_layer("c", {"layer3*": 2.0, "*.conv1": 3.0, "layer3.0.conv1": 4.0}, NAMES)["layer3.0.conv1"] == 4.0
