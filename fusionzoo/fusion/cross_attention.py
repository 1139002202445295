"""MulT-style directional cross-modal attention.

Legend: ``b`` batch, ``m`` modality, ``n`` tokens, ``d`` features, ``h`` model width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fusionzoo.fusion.base import DEFAULT_DIMS, FusionBlock
from fusionzoo.layers.attention import CrossAttentionBlock
from fusionzoo.layers.masking import masked_mean
from fusionzoo.registry import FUSIONS

__all__ = ["CrossAttentionFusion"]


@FUSIONS.register(
    "cross_attention",
    example_kwargs={"in_dims": DEFAULT_DIMS, "out_dim": 16, "hidden_dim": 16, "depth": 1, "num_heads": 2},
    paper="https://arxiv.org/abs/1906.00295",
    tags=("attention", "cross-modal", "tokens"),
)
class CrossAttentionFusion(FusionBlock):
    """Multimodal Transformer (Tsai et al. 2019) cross-modal streams.

    For every ordered pair (target ``t``, source ``s != t``), ``depth`` cross-attention blocks let
    ``t``'s tokens attend to ``s``'s tokens. The ``M - 1`` streams of a target are concatenated per
    token, mean-pooled over ``t``'s present tokens, and the ``M`` pooled vectors are concatenated and
    projected to ``out_dim``. Every source carries a learned null token that is always attendable,
    so a missing source gives a learned (not NaN) attention result; a missing target pools to a
    learned vector.

    Shapes: ``{m: [b, n_m, d_m]} -> [b, out_dim]``.
    """

    input_kind = "tokens"

    def __init__(
        self,
        *,
        in_dims: Mapping[str, int],
        out_dim: int,
        hidden_dim: int = 64,
        depth: int = 1,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        num = len(self.modalities)
        if num < 2:
            raise ValueError(f"CrossAttentionFusion needs at least 2 modalities, got {list(self.modalities)}")
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden_dim) for m, d in self.in_dims.items()})
        self.null = nn.Parameter(0.02 * torch.randn(1, 1, hidden_dim))
        self.streams = nn.ModuleDict(
            {
                f"{t}__{s}": nn.ModuleList(
                    [
                        CrossAttentionBlock(
                            hidden_dim, context_dim=hidden_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout
                        )
                        for _ in range(depth)
                    ]
                )
                for t in self.modalities
                for s in self.modalities
                if s != t
            }
        )
        self.missing = nn.ParameterDict(
            {m: nn.Parameter(0.02 * torch.randn((num - 1) * hidden_dim)) for m in self.modalities}
        )
        self.out = nn.Linear(num * (num - 1) * hidden_dim, out_dim)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, present = self.prepare(features, present)
        x = {m: self.proj[m](features[m]) for m in self.modalities}
        b = x[self.modalities[0]].shape[0]
        null = self.null.expand(b, -1, -1)
        always = torch.ones(b, 1, dtype=torch.bool, device=null.device)
        context = {
            m: (torch.cat([null, x[m]], dim=1), None if present is None else torch.cat([always, present[m]], dim=1))
            for m in self.modalities
        }
        pooled = []
        for t in self.modalities:
            streams = []
            for s in self.modalities:
                if s == t:
                    continue
                q = x[t]
                ctx, ctx_mask = context[s]
                for block in self.streams[f"{t}__{s}"]:
                    q = block(q, ctx, ctx_mask)
                streams.append(q)
            mask = None if present is None else present[t]
            z = masked_mean(torch.cat(streams, dim=-1), mask, dim=1)
            pooled.append(z if mask is None else torch.where(mask.any(dim=1, keepdim=True), z, self.missing[t]))
        return self.out(torch.cat(pooled, dim=-1))
