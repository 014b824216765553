"""The tutorial's `Net`, with a width multiplier on the convolution channels."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_channels(width: float) -> tuple[int, int]:
    """Channels of the two convolutions: (6, 16) at width 1, as in the tutorial."""
    return max(1, round(6 * width)), max(1, round(16 * width))


class Net(nn.Module):
    """conv 3->6 5x5, max-pool 2, conv 6->16 5x5, fc 400-120-84-10, ReLU.

    `width` multiplies the convolution channels, the tutorial's own exercise
    ("try increasing the width of your network").
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10):
        super().__init__()
        c1, c2 = conv_channels(width)
        self.conv1 = nn.Conv2d(3, c1, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
