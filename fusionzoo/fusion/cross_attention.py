"""MulT-style directional cross-modal attention.

Legend: ``b`` batch, ``m`` modality, ``n`` tokens, ``d`` features, ``h`` model width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from fusionzoo.fusion.base import DEFAULT_DIMS, FusionBlock
from fusionzoo.layers.attention import GroupedCrossAttentionBlock
from fusionzoo.layers.masking import mask_of, masked_mean
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

    The ``M(M-1)`` streams have their own weights but run as one grouped computation
    (:class:`~fusionzoo.layers.attention.GroupedCrossAttentionBlock`: batched matmuls, one SDPA
    call), every modality's tokens padded to the longest (masked; no cost when all have as many).

    Shapes: ``{m: [b, n_m, d_m]} -> [b, out_dim]``.
    """

    input_kind = "tokens"
    fast_path = True

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
        #: (target, source) of every stream, targets in modality order: group ``i`` of the blocks.
        self.pairs = tuple((t, s) for t in self.modalities for s in self.modalities if s != t)
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden_dim) for m, d in self.in_dims.items()})
        self.null = nn.Parameter(0.02 * torch.randn(1, 1, hidden_dim))
        self.blocks = nn.ModuleList(
            [
                GroupedCrossAttentionBlock(len(self.pairs), hidden_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout)
                for _ in range(depth)
            ]
        )
        self.missing = nn.ParameterDict(
            {m: nn.Parameter(0.02 * torch.randn((num - 1) * hidden_dim)) for m in self.modalities}
        )
        self.out = nn.Linear(num * (num - 1) * hidden_dim, out_dim)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, present = self.prepare(features, present)
        queries, context, context_mask, masks = self.streams(features, present)
        for block in self.blocks:
            queries = block(queries, context, context_mask)
        streams = rearrange(queries, "(t s) b n h -> t b n (s h)", t=len(self.modalities))
        pooled = []
        for i, t in enumerate(self.modalities):
            z = masked_mean(streams[i], mask_of(masks, t), dim=1)
            pooled.append(z if present is None else torch.where(present[t].any(dim=1, keepdim=True), z, self.missing[t]))
        return self.out(torch.cat(pooled, dim=-1))

    def streams(self, features: dict[str, Tensor], present: dict[str, Tensor] | None) -> tuple[Tensor, Tensor, Tensor | None, dict[str, Tensor] | None]:
        """The first block's inputs from ``prepare``d features: queries ``[g, b, n, h]`` (stream ``i``
        is ``pairs[i]``), context ``[g, b, 1 + n, h]`` (the null token first), its mask ``[g, b, 1 + n]``
        and every modality's token mask padded to ``n`` (both None when nothing is missing or padded)."""
        x = {m: self.proj[m](features[m]) for m in self.modalities}
        b = x[self.modalities[0]].shape[0]
        n = max(t.shape[1] for t in x.values())
        masks = _padded_masks(x, present, n)  # None: every token of every modality is there
        x = {m: F.pad(t, (0, 0, 0, n - t.shape[1])) for m, t in x.items()}
        null = self.null.expand(b, -1, -1)
        queries = torch.stack([x[t] for t, _ in self.pairs])  # [g, b, n, h]
        context = torch.stack([torch.cat([null, x[s]], dim=1) for _, s in self.pairs])  # [g, b, 1 + n, h]
        context_mask = None
        if masks is not None:
            always = torch.ones(b, 1, dtype=torch.bool, device=null.device)
            context_mask = torch.stack([torch.cat([always, masks[s]], dim=1) for _, s in self.pairs])
        return queries, context, context_mask, masks


def _padded_masks(x: dict[str, Tensor], present: dict[str, Tensor] | None, n: int) -> dict[str, Tensor] | None:
    """Token masks padded (False) to ``n`` tokens; ``None`` when nothing is missing or padded."""
    if present is None and all(t.shape[1] == n for t in x.values()):
        return None
    masks = {}
    for m, t in x.items():
        mask = torch.ones(t.shape[:2], dtype=torch.bool, device=t.device) if present is None else present[m]
        masks[m] = F.pad(mask, (0, n - t.shape[1]), value=False)
    return masks
