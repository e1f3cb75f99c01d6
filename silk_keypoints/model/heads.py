"""The two heads on the backbone features: keypoint logits and raw (unnormalised) descriptors."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import ConvBlock
from .config import SiLKConfig
from .coords import layer_map


class Head(nn.Module):
    """features (B, Cf, H, W) -> (B, out_channels, H', W'): ConvBlock(k) then Conv1x1 -> BN (no ReLU)."""

    def __init__(self, config: SiLKConfig, cin: int, out_channels: int) -> None:
        super().__init__()
        k = config.head_kernel
        self.hidden = ConvBlock(cin, config.head_channels, k, config.padding, config.block_order, config.batch_norm)
        self.out = ConvBlock(config.head_channels, out_channels, 1, 0, config.block_order, config.batch_norm, relu=False)
        self.layer = layer_map(k, 1, config.padding if k > 1 else 0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(features))
