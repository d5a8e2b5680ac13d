import pytest
import torch

from dns.models import get_model, input_shape, list_models, prunable_layers, register_model
from dns.surgeon import Surgeon


@pytest.mark.parametrize("name, params, layers", [
    ("lenet300", 266610, {"fc1": 235500, "fc2": 30100, "fc3": 1010}),
    ("lenet5", 431080, {"conv1": 520, "conv2": 25050, "fc1": 400500, "fc2": 5010}),
    ("alexnet", 60965224, {"conv1": 34944, "conv2": 307456, "conv3": 885120, "conv4": 663936, "conv5": 442624,
                           "fc6": 37752832, "fc7": 16781312, "fc8": 4097000}),
])
def test_parameter_counts_match_the_paper(name, params, layers):
    model = get_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert {n: sum(p.numel() for p in m.parameters()) for n, m in prunable_layers(model).items()} == layers


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_learns_through_the_masks(name):
    model = get_model(name, num_classes=7)
    Surgeon(model, layers=[])
    out = model(torch.randn(2, *input_shape(name)))  # 2 samples: AlexNet is slow on a CPU
    assert out.shape == (2, 7)
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {n}"


def test_lenet5_is_the_caffe_variant_without_relu_after_the_convolutions():
    model = get_model("lenet5")
    x = torch.rand(2, 1, 28, 28)
    pool = torch.nn.functional.max_pool2d
    features = pool(model.conv2(pool(model.conv1(x), 2)), 2)
    expected = model.fc2(torch.relu(model.fc1(features.flatten(1))))
    assert torch.equal(model(x), expected)
    assert (model.conv1(x) < 0).any()  # negative conv activations reach the pooling unclipped


def test_registry_refuses_a_second_model_of_the_same_name():
    with pytest.raises(ValueError, match="already registered"):
        @register_model(input_shape=(1, 28, 28))
        def lenet5():  # noqa: F811
            return None
    with pytest.raises(KeyError, match="unknown model 'vgg'"):
        get_model("vgg")
    with pytest.raises(KeyError, match="unknown model 'vgg'"):
        input_shape("vgg")


def test_alexnet_layers_round_to_the_papers_table():
    # the DNS paper's AlexNet table: 35K, 307K, 885K, 664K, 443K, 38M, 17M, 4M (weights and biases)
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in prunable_layers(get_model("alexnet")).items()}
    thousands = [round(counts[f"conv{i}"] / 1e3) for i in range(1, 6)]
    millions = [round(counts[f"fc{i}"] / 1e6) for i in (6, 7, 8)]
    assert thousands == [35, 307, 885, 664, 443] and millions == [38, 17, 4]


def test_alexnet_takes_227_crops_and_num_classes_sets_fc8():
    model = get_model("alexnet", num_classes=7).eval()
    assert input_shape("alexnet") == (3, 227, 227) and model.fc8.weight.shape == (7, 4096)
    assert model(torch.rand(1, 3, 227, 227)).shape == (1, 7)
    assert get_model("alexnet").fc8.weight.shape == (1000, 4096)


def test_alexnet_has_caffes_groups_and_initialisation():
    model = get_model("alexnet")
    assert [model.conv2.groups, model.conv3.groups, model.conv4.groups, model.conv5.groups] == [2, 1, 2, 2]
    biases = {n: round(m.bias.unique().item(), 6) for n, m in prunable_layers(model).items()}  # one value each
    assert biases == {"conv1": 0.0, "conv2": 0.1, "conv3": 0.0, "conv4": 0.1, "conv5": 0.1,
                      "fc6": 0.1, "fc7": 0.1, "fc8": 0.0}
    assert abs(model.fc6.weight.std().item() - 0.005) < 1e-4 and abs(model.fc8.weight.std().item() - 0.01) < 2e-4


def test_alexnet_lrn_is_caffes_formula():
    # Caffe ACROSS_CHANNELS: x / (1 + alpha/5 · sum of x² over the 5 channels centred on x)^0.75
    x = torch.randn(1, 8, 3, 3) * 30
    padded = torch.nn.functional.pad(x.pow(2), (0, 0, 0, 0, 2, 2))
    window = torch.stack([padded[:, c:c + 5].sum(1) for c in range(8)], 1)
    expected = x / (1 + 1e-4 / 5 * window).pow(0.75)
    assert torch.allclose(get_model("alexnet").norm1(x), expected, rtol=1e-5)
