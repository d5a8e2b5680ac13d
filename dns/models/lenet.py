"""The two MNIST networks of the DNS paper, as in the authors' Caffe prototxts."""

from __future__ import annotations

import math

import torch
from torch import nn

from dns.models.registry import register_model


def caffe_init_(model: nn.Module) -> None:
    """Caffe's `xavier` weight filler (uniform ±sqrt(3 / fan_in)) and zero biases, as the authors trained."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            bound = math.sqrt(3.0 / fan_in)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


class LeNet300(nn.Module):
    """LeNet-300-100: 784-300-100-10 with ReLU; 266,610 parameters. Takes in_channels×28×28 images."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * 28 * 28, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        caffe_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5 (20-50-500-10), not LeCun's 6-16-120-84; 431,080 parameters.

    As in Caffe's lenet_train_test.prototxt there is no nonlinearity after the convolutions: the only
    ReLU follows fc1.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)
        caffe_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)


@register_model(input_shape=(1, 28, 28))
def lenet300(num_classes: int = 10, in_channels: int = 1) -> LeNet300:
    return LeNet300(num_classes, in_channels)


@register_model(input_shape=(1, 28, 28))
def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5(num_classes, in_channels)
