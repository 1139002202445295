"""Encoder for pre-extracted feature vectors (e.g. COVAREP / Facet / GloVe averages, as in MMSA).

Legend: ``b`` batch, ``d`` features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fusionzoo.encoders.base import Encoder
from fusionzoo.layers.mlp import MLP
from fusionzoo.layers.validation import check_positive_int, check_tensor
from fusionzoo.registry import ENCODERS

__all__ = ["FeatureMLPEncoder"]


@ENCODERS.register(
    "feature_mlp",
    example_kwargs={"in_dim": 20, "out_dim": 16, "hidden_dims": (32,)},
    tags=("features", "any-modality"),
)
class FeatureMLPEncoder(Encoder):
    """MLP over a pre-extracted feature vector; works for any modality name.

    Shapes: ``[b, in_dim] -> [b, out_dim]``; ``forward_tokens`` gives one token, ``[b, 1, out_dim]``.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int] = (),
        modality: str = "features",
        activation: str = "gelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_dim = check_positive_int(in_dim, name="in_dim", where="FeatureMLPEncoder")
        self.out_dim = check_positive_int(out_dim, name="out_dim", where="FeatureMLPEncoder")
        self.modality = modality
        self.mlp = MLP(in_dim, list(hidden_dims), out_dim, activation=activation, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, name=self.modality, shape=("B", self.in_dim))
        return self.mlp(x)

    def forward_tokens(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.forward(x).unsqueeze(1), None

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.randn(batch_size, self.in_dim)
