"""Any classifier of torchvision.models, by name, with weights from a local file: `get_model("torchvision",
arch="resnet50", weights="resnet50-0676ba61.pth", num_classes=10)`.

Nothing is ever downloaded: `weights` is a file you have, e.g. the .pth torchvision itself downloads to
~/.cache/torch/hub/checkpoints/. Tensors whose shape differs from the model's (the classifier for another
number of classes, the stem for another number of input channels) keep their fresh initialisation.
(arch="alexnet" is torchvision's AlexNet; the model named alexnet is Caffe's, as the DNS paper pruned.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from dns.models.registry import register_model

log = logging.getLogger(__name__)

NAMES_HINT = "see torchvision.models.list_models(module=torchvision.models) for the names, e.g. resnet18, resnet50, " \
             "vgg16, mobilenet_v2"

# builder arguments beyond num_classes: googlenet and inception_v3 would return their auxiliary classifiers'
# outputs too in training mode, and warn unless told how to initialise
BUILD_ARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
              "inception_v3": {"aux_logits": False, "init_weights": True}}
AUX_HEADS = ("aux1.", "aux2.", "AuxLogits.")  # their parameters in torchvision's weight files


def classifier_names() -> list[str]:
    """The classification architectures of torchvision.models (no detection, segmentation or video models)."""
    from torchvision import models  # here, not at the top: importing torchvision takes a second or more
    return models.list_models(module=models)


def replace_stem(model: nn.Module, in_channels: int) -> None:
    """Replace the model's first Conv2d (in named_modules order: the stem) by one taking `in_channels` inputs."""
    name, stem = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, stem.dilation,
                    stem.groups, stem.bias is not None, stem.padding_mode,
                    device=stem.weight.device, dtype=stem.weight.dtype)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's ResNet, VGG, ...
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch.save file: a state_dict, or a dict holding one under "state_dict"."""
    if not path.is_file():
        raise ValueError(f"weights file {path} not found: give the path of a local state_dict file "
                         "(nothing is downloaded), or weights=null for an untrained model")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch.save file, or one holding more than tensors and containers
        raise ValueError(f"weights file {path} cannot be read as a state_dict "
                         f"({(str(e).strip().splitlines() or [type(e).__name__])[0]}): "
                         "give a file saved with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} holds no state_dict (a dict of tensors, or one under "
                         "\"state_dict\"): give a file saved with torch.save(model.state_dict(), path)")
    return state


def load_weights(model: nn.Module, path: Path, arch: str) -> None:
    """Load the file's tensors into `model`; those of another shape keep their fresh init, with a warning."""
    state, own = read_state_dict(path), model.state_dict()
    # torchvision's older files predate BatchNorm's integer step counter (the model keeps its own), and its
    # googlenet and inception_v3 files hold the auxiliary classifiers this builder leaves out
    missing = [k for k in own if k not in state and own[k].is_floating_point()]  # as dns.checkpoint.fill
    state = {k: v for k, v in state.items() if k in own or not k.startswith(AUX_HEADS)}
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        raise ValueError(f"weights file {path} holds no {arch} weights: {len(missing)} keys missing ({some(missing)}), "
                         f"{len(unexpected)} unexpected ({some(unexpected)}): set arch to the architecture "
                         "the file was saved from, or give a file of this one")
    reshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    if any(t.is_meta for t in own.values()):  # on the meta device (a config check) there is nothing to fill
        return
    model.load_state_dict({k: v for k, v in state.items() if k not in reshaped}, strict=False)  # checked above
    if reshaped:
        log.warning("%s: %d tensors of another shape keep their fresh initialisation: %s", path, len(reshaped),
                    ", ".join(f"{k} {list(state[k].shape)} -> {list(own[k].shape)}" for k in reshaped))


@register_model(input_shape=(3, 224, 224))
def torchvision(arch: str | None = None, weights: str | None = None, num_classes: int = 1000,
                in_channels: int = 3) -> nn.Module:
    """torchvision.models' `arch` with `num_classes` outputs and `in_channels` inputs, untrained or with the
    state_dict in the local file `weights` (loaded with weights_only=True)."""
    from torchvision import models

    if arch is None:
        raise ValueError(f"the torchvision model needs an arch: set model.arch (arch=...); {NAMES_HINT}")
    if arch not in classifier_names():
        raise ValueError(f"unknown torchvision arch {arch!r}: {NAMES_HINT}")
    build_args = {"weights": None, "num_classes": num_classes, **BUILD_ARGS.get(arch, {})}
    try:
        model = models.get_model(arch, **build_args)
    except NotImplementedError:
        if torch.get_default_device().type != "meta":
            raise
        # regnet computes its block widths with tensors, which cannot be read on the meta device:
        # build it on the CPU and drop the values
        with torch.device("cpu"):
            model = models.get_model(arch, **build_args).to("meta")
    if in_channels != 3:
        replace_stem(model, in_channels)
    if weights is not None:
        load_weights(model, Path(weights).expanduser(), arch)
    return model
