"""Early fusion by concatenation followed by an MLP.

Legend: ``b`` batch, ``m`` modality, ``d`` features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fusionzoo.fusion.base import DEFAULT_DIMS, FusionBlock
from fusionzoo.layers.masking import fill_missing
from fusionzoo.layers.mlp import MLP
from fusionzoo.registry import FUSIONS

__all__ = ["ConcatMLPFusion"]

@FUSIONS.register(
    "concat_mlp",
    example_kwargs={"in_dims": DEFAULT_DIMS, "out_dim": 16, "hidden_dims": (32,)},
    tags=("early",),
)
class ConcatMLPFusion(FusionBlock):
    """Per-modality LayerNorm, concatenation in sorted modality order, then an MLP.

    A missing modality is replaced (after its LayerNorm) by a learned per-modality embedding, so the
    MLP always sees a full vector and a sample with nothing present maps to a learned output.

    Shapes: ``{m: [b, d_m]} -> [b, out_dim]``.
    """

    input_kind = "pooled"
    fast_path = True

    def __init__(
        self,
        *,
        in_dims: Mapping[str, int],
        out_dim: int,
        hidden_dims: Sequence[int] = (256,),
        norm: bool = True,
        activation: str = "gelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        self.norms = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in self.in_dims.items()}) if norm else None
        self.missing = nn.ParameterDict({m: nn.Parameter(0.02 * torch.randn(d)) for m, d in self.in_dims.items()})
        self.mlp = MLP(sum(self.in_dims.values()), list(hidden_dims), out_dim, activation=activation, dropout=dropout)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, present = self.prepare(features, present)
        norms = self.norms
        parts = [features[m] if norms is None else norms[m](features[m]) for m in self.modalities]
        if present is not None:
            parts = [fill_missing(x, present[m], self.missing[m]) for x, m in zip(parts, self.modalities)]
        return self.mlp(torch.cat(parts, dim=-1))
