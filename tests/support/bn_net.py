"""A small BatchNorm network whose statistics match its data, and that data.

Random BN statistics (``zoo.randomize_batchnorm``) make re-estimating them on data look like damage;
the round-trip tests estimate the running statistics on the same distribution they feed, as training would.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from tests.support import zoo


def small_net() -> nn.Module:
    """conv-BN-ReLU (8) -> conv-BN-ReLU (16) -> [block: conv-BN-ReLU-conv-BN + x] -> ReLU -> GAP -> Linear (4)."""
    return nn.Sequential(
        zoo._conv_bn_relu(3, 8),
        zoo._conv_bn_relu(8, 16, stride=2),
        zoo.BasicBlock(16, 16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


def samples(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 12, 12)).astype(np.float32)
