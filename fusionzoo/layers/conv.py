"""Convolution building blocks.

Legend: ``b`` batch, ``c`` channels, ``h w`` height width.
"""

from __future__ import annotations

import math

from torch import nn

from fusionzoo.layers.mlp import get_activation

__all__ = ["ConvNormAct", "NORMS"]

NORMS = ("batch", "group", "none")


class ConvNormAct(nn.Sequential):
    """``Conv2d -> BatchNorm2d | GroupNorm | nothing -> activation`` with "same" padding for odd kernels.

    Shapes: ``[b, in_channels, h, w] -> [b, out_channels, h / stride, w / stride]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        norm: str = "batch",
        activation: str = "relu",
    ) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=norm == "none")
        ]
        if norm == "batch":
            layers.append(nn.BatchNorm2d(out_channels))
        elif norm == "group":
            layers.append(nn.GroupNorm(math.gcd(8, out_channels), out_channels))
        layers.append(get_activation(activation))
        super().__init__(*layers)
        self.out_channels = out_channels
