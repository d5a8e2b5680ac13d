import copy
import logging
import warnings

import pytest
import torch

from dns.models import get_model, input_error, input_shape, list_models, prunable_layers, register_model
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


def small_case(name: str) -> tuple[dict, tuple[int, int, int]]:
    """get_model's arguments and a sample shape for a quick forward pass: torchvision needs an arch, and its
    resnet18 takes 64×64 images as well as 224×224 ones."""
    return ({"arch": "resnet18"}, (3, 64, 64)) if name == "torchvision" else ({}, input_shape(name))


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_learns_through_the_masks(name):
    kwargs, shape = small_case(name)
    model = get_model(name, num_classes=7, **kwargs)
    Surgeon(model, layers=[])
    out = model(torch.randn(2, *shape))  # 2 samples: AlexNet is slow on a CPU
    assert out.shape == (2, 7)
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {n}"


@pytest.mark.parametrize("name", list_models())
def test_a_masked_model_computes_with_its_kept_weights_and_every_weight_learns(name):
    """Masks with zeros (not all ones): the output is the plain model's with W ⊙ T, and pruned weights get the full
    gradient (straight-through)."""
    kwargs, shape = small_case(name)
    torch.manual_seed(0)
    model = get_model(name, num_classes=7, **kwargs)
    plain = copy.deepcopy(model)
    Surgeon(model, layers=[])
    masks = {}
    for layer, module in prunable_layers(model).items():
        for key in ("weight", "bias"):
            if f"{key}_mask" in module._buffers:
                mask = module._buffers[f"{key}_mask"]
                mask.copy_(torch.rand(mask.shape) < 0.5)
                mask.view(-1)[0] = 0  # a pruned entry in every tensor, however small
                masks[f"{layer}.{key}"] = mask
                with torch.no_grad():
                    plain.get_parameter(f"{layer}.{key}").mul_(mask)
    x = torch.randn(2, *shape)
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)  # the same dropout
    torch.testing.assert_close(out, plain(x), rtol=1e-5, atol=1e-6)
    assert out.abs().sum() > 0
    out.square().mean().backward()
    for key, mask in masks.items():
        grad = model.get_parameter(f"{key}_orig").grad
        assert grad[mask == 0].abs().sum() > 0, f"pruned weights of {key} get no gradient"


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


# -- num_classes and in_channels ------------------------------------------------------------------------

@pytest.mark.parametrize("name, first, last", [
    # the first two entries of the first and the last weight at torch seed 0, before in_channels existed:
    # a model built with the defaults must stay bitwise the same, or past runs cannot be reproduced
    ("lenet5", [-0.3311556577682495, 0.09827135503292084], [-0.0565229207277298, -0.044221945106983185]),
    ("lenet300", [-0.005357667803764343, 4.817540320800617e-05], [0.06714530289173126, 0.154165580868721]),
])
def test_defaults_build_the_same_parameters_as_before(name, first, last):
    torch.manual_seed(0)
    weights = [p for n, p in get_model(name).named_parameters() if n.endswith("weight")]
    assert weights[0].flatten()[:2].tolist() == first and weights[-1].flatten()[:2].tolist() == last


def test_in_channels_sets_the_first_layer():
    assert get_model("lenet5", in_channels=3).conv1.weight.shape == (20, 3, 5, 5)
    assert get_model("lenet300", in_channels=3).fc1.weight.shape == (300, 3 * 28 * 28)
    with torch.device("meta"):
        assert get_model("alexnet", in_channels=1).conv1.weight.shape == (96, 1, 11, 11)
    assert get_model("resnet20", in_channels=1).conv1.weight.shape == (16, 1, 3, 3)
    assert get_model("resnet20", num_classes=100).fc.weight.shape == (100, 64)
    assert get_model("lenet300", in_channels=3, num_classes=100)(torch.rand(2, 3, 28, 28)).shape == (2, 100)


# -- CIFAR ResNets ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, params, table, digits", [
    # He et al. 2016, Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M parameters (here at 10 classes)
    ("resnet20", 269722, 0.27, 2), ("resnet32", 464154, 0.46, 2), ("resnet44", 658586, 0.66, 2),
    ("resnet56", 853018, 0.85, 2), ("resnet110", 1727962, 1.7, 1),
])
def test_resnet_parameter_counts_match_he_et_al(name, params, table, digits):
    model = get_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == params and round(count / 1e6, digits) == table
    depth = int(name.removeprefix("resnet"))
    assert len(prunable_layers(model)) == depth and input_shape(name) == (3, 32, 32)  # 6n + 2 weight layers


def test_resnet_layers_have_torchvision_names():
    model = get_model("resnet56")
    names = list(prunable_layers(model))
    assert names[:4] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    assert names[-3:] == ["layer3.8.conv1", "layer3.8.conv2", "fc"]
    assert names == ["conv1", *(f"layer{s}.{b}.conv{i}" for s in (1, 2, 3) for b in range(9) for i in (1, 2)), "fc"]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.kernel_size == (3, 3) and m.bias is None for m in convs)  # no 1×1 projection shortcuts
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], torch.nn.BatchNorm2d) for n in ("bn1", "layer1.0.bn1", "layer3.8.bn2"))


def test_option_a_shortcut_subsamples_and_adds_zero_channels():
    model = get_model("resnet20").eval()
    block = model.layer2[0]  # 16 -> 32 channels, 32×32 -> 16×16
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    x = torch.randn(2, 16, 32, 32)
    zeros = torch.zeros(2, 8, 16, 16)
    assert torch.equal(block.shortcut(x), torch.cat([zeros, x[:, :, ::2, ::2], zeros], 1))
    expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))) + block.shortcut(x))
    assert torch.equal(block(x), expected) and block(x).shape == (2, 32, 16, 16)
    assert model.layer3[0](torch.randn(2, 32, 16, 16)).shape == (2, 64, 8, 8)
    same = model.layer3[1]  # within a stage the shortcut is the identity
    y = torch.randn(2, 64, 8, 8)
    assert torch.equal(same.shortcut(y), y) and same(y).shape == (2, 64, 8, 8)


def test_resnet_takes_any_image_size_and_channels():
    model = get_model("resnet20", in_channels=1).eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)  # MNIST: adaptive pooling of the 7×7 map
    assert get_model("resnet20").eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# -- any torchvision classifier -------------------------------------------------------------------------

def test_torchvision_builds_classifiers_without_downloads_or_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # googlenet and inception_v3 warn about their init unless told
        with torch.device("meta"):
            resnet18 = get_model("torchvision", arch="resnet18")
            resnet50 = get_model("torchvision", arch="resnet50")
            googlenet = get_model("torchvision", arch="googlenet", num_classes=10)
            inception = get_model("torchvision", arch="inception_v3", num_classes=10)
            vgg16 = get_model("torchvision", arch="vgg16", num_classes=10)
    assert sum(p.numel() for p in resnet18.parameters()) == 11689512  # torchvision's documented counts
    assert sum(p.numel() for p in resnet50.parameters()) == 25557032
    assert googlenet.aux1 is None and inception.AuxLogits is None  # one output, also in training mode
    assert list(prunable_layers(vgg16))[-1] == "classifier.6" and vgg16.classifier[6].out_features == 10
    assert input_shape("torchvision") == (3, 224, 224)


def test_torchvision_in_channels_replaces_the_stem():
    model = get_model("torchvision", arch="resnet18", num_classes=10, in_channels=1).eval()
    stem = model.conv1
    assert stem.weight.shape == (64, 1, 7, 7) and (stem.stride, stem.padding, stem.bias) == ((2, 2), (3, 3), None)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with torch.device("meta"):
        vit = get_model("torchvision", arch="vit_b_16", in_channels=1)
        mobilenet = get_model("torchvision", arch="mobilenet_v2", in_channels=4)
    assert vit.conv_proj.weight.shape == (768, 1, 16, 16) and vit.conv_proj.stride == (16, 16)
    assert mobilenet.features[0][0].weight.shape == (32, 4, 3, 3)


def test_torchvision_weights_load_from_a_local_file(tmp_path, caplog):
    torch.manual_seed(0)
    trained = get_model("torchvision", arch="resnet18").state_dict()  # stands for a downloaded .pth: 1000 classes
    torch.save(trained, tmp_path / "resnet18.pth")
    torch.save({"state_dict": trained, "epoch": 90}, tmp_path / "checkpoint.pt")

    with caplog.at_level(logging.WARNING, logger="dns.models.torchvision_models"):
        same = get_model("torchvision", arch="resnet18", weights=str(tmp_path / "resnet18.pth"))
    assert all(torch.equal(v, trained[k]) for k, v in same.state_dict().items()) and not caplog.records

    torch.manual_seed(1)
    ten = get_model("torchvision", arch="resnet18", weights=str(tmp_path / "checkpoint.pt"), num_classes=10)
    fresh = {k for k, v in ten.state_dict().items() if v.shape != trained[k].shape}
    assert fresh == {"fc.weight", "fc.bias"} and ten.fc.weight.shape == (10, 512)
    assert all(torch.equal(v, trained[k]) for k, v in ten.state_dict().items() if k not in fresh)
    assert "fc.weight [1000, 512] -> [10, 512]" in caplog.text and "fc.bias" in caplog.text

    caplog.clear()
    gray = get_model("torchvision", arch="resnet18", weights=str(tmp_path / "resnet18.pth"), in_channels=1)
    assert gray.conv1.weight.shape == (64, 1, 7, 7) and torch.equal(gray.layer1[0].conv1.weight,
                                                                     trained["layer1.0.conv1.weight"])
    assert "conv1.weight [64, 3, 7, 7] -> [64, 1, 7, 7]" in caplog.text and "fc.weight" not in caplog.text

    with warnings.catch_warnings(), torch.device("meta"):  # a config check: the file's keys and shapes are checked,
        warnings.simplefilter("error")                      # nothing is copied into the meta tensors
        get_model("torchvision", arch="resnet18", weights=str(tmp_path / "resnet18.pth"), num_classes=10)


def test_torchvision_takes_its_older_files_and_those_with_auxiliary_heads(tmp_path):
    import torchvision

    torch.manual_seed(0)
    old = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")  # as torchvision's resnet18-f37072fd.pth: no BatchNorm step counters
    model = get_model("torchvision", arch="resnet18", weights=str(tmp_path / "old.pth"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in old.items())
    released = torchvision.models.googlenet(aux_logits=True, init_weights=True).state_dict()  # aux1.*, aux2.*
    assert any(k.startswith("aux1.") for k in released)
    torch.save(released, tmp_path / "googlenet.pth")
    model = get_model("torchvision", arch="googlenet", weights=str(tmp_path / "googlenet.pth"))
    assert all(torch.equal(v, released[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs, message", [
    ({"arch": "resnet19"}, r"unknown torchvision arch 'resnet19': see torchvision.models.list_models\(module="),
    ({}, "needs an arch"),
    ({"arch": "resnet18", "weights": "missing.pth"}, "weights file missing.pth not found"),
    ({"arch": "resnet18", "weights": "squeezenet.pth"},
     r"holds no resnet18 weights: 102 keys missing \(conv1.weight, .*52 unexpected \(features.0.weight"),
    ({"arch": "resnet18", "weights": "notes.pt"}, "holds no state_dict"),
])
def test_torchvision_refuses_with_a_one_line_error(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.chdir(tmp_path)
    torch.save(get_model("torchvision", arch="squeezenet1_1").state_dict(), "squeezenet.pth")  # another architecture
    torch.save({"epoch": 3, "lr": 0.1}, "notes.pt")
    with pytest.raises(ValueError, match=message) as error, torch.device("meta"):
        get_model("torchvision", **kwargs)
    assert "\n" not in str(error.value)


# -- input_error: does a model fit the data? ------------------------------------------------------------

def meta_model(name: str, num_classes: int = 10, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):  # no memory, no compute: only the shapes
        return get_model(name, num_classes=num_classes, **kwargs)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("lenet5", {}, (1, 28, 28)), ("lenet300", {}, (1, 28, 28)), ("alexnet", {}, (3, 227, 227)),
    *((f"resnet{d}", {}, (3, 32, 32)) for d in (20, 32, 44, 56, 110)),
    ("resnet20", {"in_channels": 1}, (1, 28, 28)),
    *(("torchvision", {"arch": a}, (3, 224, 224))
      for a in ("resnet18", "resnet50", "vgg16", "mobilenet_v2", "googlenet", "vit_b_16")),
    ("torchvision", {"arch": "resnet18"}, (3, 64, 64)),
    ("torchvision", {"arch": "resnet18", "in_channels": 1}, (1, 28, 28)),
    ("torchvision", {"arch": "regnet_x_400mf"}, (3, 224, 224)),  # built on the CPU: regnet cannot build on meta
])
def test_input_error_accepts_models_that_fit(name, kwargs, shape):
    assert input_error(meta_model(name, **kwargs), shape, 10, name=name) is None


@pytest.mark.parametrize("name, kwargs, shape, parts", [
    ("lenet5", {}, (3, 32, 32), ["lenet5 cannot take 3x32x32 images (lenet5's native input is 1x28x28)",
                                 "conv1 (Conv2d) fails on its [2, 3, 32, 32] input"]),
    ("lenet5", {"in_channels": 3}, (3, 32, 32), ["fc1 (Linear) fails on its [2, 1250] input", "[800, 500]"]),
    ("alexnet", {}, (3, 32, 32), ["alexnet cannot take 3x32x32 images", "Output size is too small"]),
    ("torchvision", {"arch": "vgg16", "in_channels": 1}, (1, 28, 28),
     ["cannot take 1x28x28 images", "features.30 (MaxPool2d) fails on its [2, 512, 1, 1] input"]),
    ("torchvision", {"arch": "vit_b_16"}, (3, 32, 32), ["AssertionError: Wrong image height! Expected 224 but got 32"]),
])
def test_input_error_says_why_a_model_cannot_take_an_input(name, kwargs, shape, parts):
    message = input_error(meta_model(name, **kwargs), shape, 10, name=name)
    assert message is not None and "\n" not in message
    assert all(part in message for part in parts), message


def test_input_error_checks_the_classes_and_leaves_the_model_as_it_was():
    model = get_model("lenet5")  # on the CPU too
    assert input_error(model, (1, 28, 28), 7) == "LeNet5 cannot take 1x28x28 images: its output for 2 images is " \
                                                  "shape [2, 10], not [2, 7]"
    assert input_error(model, (3, 28, 28), 10).startswith("LeNet5 cannot take 3x28x28 images: conv1 (Conv2d) fails")
    assert model.training and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
