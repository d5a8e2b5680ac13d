"""AlexNet as the DNS paper pruned it: Caffe's reference bvlc_alexnet (models/bvlc_alexnet/train_val.prototxt)."""

from __future__ import annotations

import torch
from torch import nn

from dns.models.registry import register_model

# (weight std, bias) of each layer's gaussian/constant fillers in bvlc_alexnet's train_val.prototxt;
# its readme: non-zero biases are 0.1, not the 1 of Krizhevsky et al., which "gave flat loss"
CAFFE_INIT = {"conv1": (0.01, 0.0), "conv2": (0.01, 0.1), "conv3": (0.01, 0.0), "conv4": (0.01, 0.1),
              "conv5": (0.01, 0.1), "fc6": (0.005, 0.1), "fc7": (0.005, 0.1), "fc8": (0.01, 0.0)}


def caffe_lrn() -> nn.LocalResponseNorm:
    """Caffe's LRN (ACROSS_CHANNELS, local_size 5, alpha 1e-4, beta 0.75, k 1).

    Both compute x / (k + alpha/n · Σ x²)^beta over the n channels centred on x: torch's formula divides
    alpha by `size` as Caffe does (its code averages the squares), and pads n // 2 zeros either side as
    Caffe's pre_pad (n - 1) / 2 does for odd n. So the prototxt's values carry over unchanged.
    """
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)


class AlexNet(nn.Module):
    """bvlc_alexnet: five convolutions (conv2, conv4, conv5 in two groups) and three fc layers; 60,965,224
    parameters at 1000 classes. Takes 3×227×227 crops.

    Caffe rounds pooled sizes up and torch down; at 227 every pooling divides evenly (55→27, 27→13, 13→6).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 96, kernel_size=11, stride=4)
        self.norm1 = caffe_lrn()
        self.conv2 = nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2)
        self.norm2 = caffe_lrn()
        self.conv3 = nn.Conv2d(256, 384, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2)
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Linear(4096, 4096)
        self.drop7 = nn.Dropout(0.5)
        self.fc8 = nn.Linear(4096, num_classes)
        for name, (std, bias) in CAFFE_INIT.items():
            nn.init.normal_(getattr(self, name).weight, 0.0, std)
            nn.init.constant_(getattr(self, name).bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = nn.functional.max_pool2d
        x = pool(self.norm1(torch.relu(self.conv1(x))), 3, 2)
        x = pool(self.norm2(torch.relu(self.conv2(x))), 3, 2)
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        x = pool(torch.relu(self.conv5(x)), 3, 2)
        x = torch.flatten(x, 1)
        x = self.drop6(torch.relu(self.fc6(x)))
        x = self.drop7(torch.relu(self.fc7(x)))
        return self.fc8(x)


@register_model(input_shape=(3, 227, 227))
def alexnet(num_classes: int = 1000, in_channels: int = 3) -> AlexNet:
    return AlexNet(num_classes, in_channels)
