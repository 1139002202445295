"""Deep Sets fusion: a permutation-invariant pooling over per-modality embeddings.

Legend: ``b`` batch, ``m`` modality, ``d`` features, ``h`` common width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fusionzoo.fusion.base import DEFAULT_DIMS, FusionBlock
from fusionzoo.layers.masking import masked_max, masked_mean, stack_masks, unless_empty, zero_missing
from fusionzoo.layers.mlp import MLP, get_activation
from fusionzoo.registry import FUSIONS

__all__ = ["DeepSetFusion"]

POOLS = ("mean", "max", "sum")


@FUSIONS.register(
    "deepset",
    example_kwargs={"in_dims": DEFAULT_DIMS, "out_dim": 16, "hidden_dim": 24, "hidden_dims": (32,)},
    paper="https://arxiv.org/abs/1703.06114",
    tags=("set",),
)
class DeepSetFusion(FusionBlock):
    """``rho(pool_m phi_m(x_m))``: project each modality to ``hidden_dim``, pool the present ones
    (masked mean, max or sum), then an MLP. A sample with nothing present pools to a learned vector.

    Shapes: ``{m: [b, d_m]} -> [b, out_dim]``.
    """

    input_kind = "pooled"
    fast_path = True

    def __init__(
        self,
        *,
        in_dims: Mapping[str, int],
        out_dim: int,
        hidden_dim: int = 256,
        hidden_dims: Sequence[int] = (256,),
        pool: str = "mean",
        activation: str = "gelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.phi = nn.ModuleDict({m: nn.Linear(d, hidden_dim) for m, d in self.in_dims.items()})
        self.act = get_activation(activation)
        self.empty = nn.Parameter(torch.zeros(hidden_dim))
        self.rho = MLP(hidden_dim, list(hidden_dims), out_dim, activation=activation, dropout=dropout)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, present = self.prepare(features, present)
        h = torch.stack([self.act(self.phi[m](features[m])) for m in self.modalities], dim=1)
        mask = stack_masks(present, self.modalities)
        if self.pool == "mean":
            pooled = masked_mean(h, mask, dim=1)
        elif self.pool == "max":
            pooled = masked_max(h, mask, dim=1)
        else:
            pooled = zero_missing(h, mask).sum(dim=1)
        pooled = unless_empty(pooled, mask, self.empty)
        return self.rho(pooled)
