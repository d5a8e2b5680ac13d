import pytest
import torch

from dns.models import get_model, input_shape, list_models, prunable_layers, register_model
from dns.surgeon import Surgeon


@pytest.mark.parametrize("name, params, layers", [
    ("lenet300", 266610, {"fc1": 235500, "fc2": 30100, "fc3": 1010}),
    ("lenet5", 431080, {"conv1": 520, "conv2": 25050, "fc1": 400500, "fc2": 5010}),
])
def test_parameter_counts_match_the_paper(name, params, layers):
    model = get_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert {n: sum(p.numel() for p in m.parameters()) for n, m in prunable_layers(model).items()} == layers


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_learns_through_the_masks(name):
    model = get_model(name, num_classes=7)
    Surgeon(model, c={}, iter_stop={})
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
