"""Latent bottleneck fusion: a few learned tokens read every modality (Perceiver / MBT style).

Legend: ``b`` batch, ``m`` modality, ``n`` tokens, ``l`` latents, ``d`` features, ``h`` model width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fusionzoo.fusion.base import DEFAULT_DIMS, FusionBlock
from fusionzoo.layers.attention import CrossAttentionBlock, TransformerBlock
from fusionzoo.layers.tokens import ModalityTokens
from fusionzoo.layers.validation import check_positive_int
from fusionzoo.registry import FUSIONS

__all__ = ["BottleneckFusion"]


@FUSIONS.register(
    "bottleneck",
    example_kwargs={"in_dims": DEFAULT_DIMS, "out_dim": 16, "hidden_dim": 32, "num_latents": 4, "depth": 1, "num_heads": 2},
    paper="https://arxiv.org/abs/2107.00135",
    tags=("attention", "bottleneck", "tokens"),
)
class BottleneckFusion(FusionBlock):
    """``num_latents`` learned tokens cross-attend to all modality tokens, then self-attend, ``depth``
    times; the mean latent is projected to ``out_dim``.

    Information between modalities flows only through the latents (the attention bottleneck of MBT,
    Nagrani et al. 2021, in Perceiver form, Jaegle et al. 2021), so the cost is linear in the number
    of input tokens. A learned null token is always attendable: with nothing present the latents read
    only it and the output is learned, never NaN.

    Shapes: ``{m: [b, n_m, d_m]} -> [b, out_dim]``; latents ``[b, l, h]``.
    """

    input_kind = "tokens"
    fast_path = True

    def __init__(
        self,
        *,
        in_dims: Mapping[str, int],
        out_dim: int,
        hidden_dim: int = 256,
        num_latents: int = 8,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        check_positive_int(num_latents, name="num_latents", where="BottleneckFusion")
        self.tokens = ModalityTokens(self.in_dims, hidden_dim)  # its special token is the null key
        self.latents = nn.Parameter(0.02 * torch.randn(1, num_latents, hidden_dim))
        kw = {"num_heads": num_heads, "mlp_ratio": mlp_ratio, "dropout": dropout}
        self.cross = nn.ModuleList([CrossAttentionBlock(hidden_dim, context_dim=hidden_dim, **kw) for _ in range(depth)])
        self.mix = nn.ModuleList([TransformerBlock(hidden_dim, **kw) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden_dim)
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, present = self.prepare(features, present)
        context, mask = self.tokens(features, present)
        z = self.latents.expand(context.shape[0], -1, -1)
        for cross, mix in zip(self.cross, self.mix):
            z = mix(cross(z, context, mask))
        return self.out(self.norm(z.mean(dim=1)))
