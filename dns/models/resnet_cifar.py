"""The CIFAR-10 ResNets of He et al. 2016 (Deep Residual Learning for Image Recognition, §4.2).

A 3×3 convolution of 16 channels, three stages of n basic blocks (16, 32, 64 channels; the first block of
stages 2 and 3 halves the feature map), global average pooling and a fully connected layer: 6n + 2 layers.
Shortcuts are option A of the paper, which adds no parameters: the identity, and where the shape changes,
the input subsampled by 2 and zero-padded with the extra channels.

Module names follow torchvision's ResNet (`conv1`, `bn1`, `layer1.0.conv1`, ..., `fc`), so layer
selections and per-layer settings can name them with globs such as `layer3.*.conv2`.
"""

from __future__ import annotations

import torch
from torch import nn

from dns.models.registry import register_model


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A 3×3 convolution that keeps the size (stride 1) or halves it (stride 2); no bias, BatchNorm follows."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A's shortcut where the shape changes: every `stride`-th pixel, zero channels added either side.

    The zeros go half before and half after the input's channels, as in the widely used
    akamaster/pytorch_resnet_cifar10 (`F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))`),
    so that networks trained with it behave the same here.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.before = (out_channels - in_channels) // 2
        self.after = out_channels - in_channels - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, self.before, self.after))  # (W, H, C) pads, last dim first

    def extra_repr(self) -> str:
        return f"stride={self.stride}, zero_channels=({self.before}, {self.after})"


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm, added to the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 32×32 images; any size works, as the pooling before `fc` is adaptive."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)  # He et al.'s init; BatchNorm keeps its 1 and 0

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        first = BasicBlock(in_channels, out_channels, stride)
        return nn.Sequential(first, *(BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# He et al.'s Table 6: n = 3, 5, 7, 9, 18 give 0.27M, 0.46M, 0.66M, 0.85M and 1.7M parameters

@register_model(input_shape=(3, 32, 32))
def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(3, num_classes, in_channels)


@register_model(input_shape=(3, 32, 32))
def resnet32(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(5, num_classes, in_channels)


@register_model(input_shape=(3, 32, 32))
def resnet44(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(7, num_classes, in_channels)


@register_model(input_shape=(3, 32, 32))
def resnet56(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(9, num_classes, in_channels)


@register_model(input_shape=(3, 32, 32))
def resnet110(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(18, num_classes, in_channels)
