"""Early-fusion transformer over the tokens of every modality.

Legend: ``b`` batch, ``m`` modality, ``n`` tokens, ``d`` features, ``h`` model width.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from fusionzoo.fusion.base import DEFAULT_DIMS, FusionBlock
from fusionzoo.layers.attention import TransformerBlock
from fusionzoo.layers.tokens import ModalityTokens
from fusionzoo.registry import FUSIONS

__all__ = ["TransformerFusion"]


@FUSIONS.register(
    "transformer",
    example_kwargs={"in_dims": DEFAULT_DIMS, "out_dim": 16, "hidden_dim": 32, "depth": 1, "num_heads": 2},
    paper="https://arxiv.org/abs/2107.00135",
    tags=("attention", "early", "tokens"),
)
class TransformerFusion(FusionBlock):
    """Project every modality's tokens to ``hidden_dim``, add a modality-type embedding, prepend a
    CLS token, run joint self-attention (SDPA) with a key padding mask built from ``present``, and
    project the CLS output to ``out_dim``.

    Missing and padded tokens are never attended to; the CLS token always is, so a sample with
    nothing present attends only to it and returns a learned output. Cost is quadratic in the total
    number of tokens.

    Shapes: ``{m: [b, n_m, d_m]} -> [b, out_dim]``.
    """

    input_kind = "tokens"
    fast_path = True

    def __init__(
        self,
        *,
        in_dims: Mapping[str, int],
        out_dim: int,
        hidden_dim: int = 256,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dims=in_dims, out_dim=out_dim)
        self.tokens = ModalityTokens(self.in_dims, hidden_dim)  # its special token is the CLS token
        self.blocks = nn.ModuleList(
            [TransformerBlock(hidden_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        features, present = self.prepare(features, present)
        x, mask = self.tokens(features, present)
        for block in self.blocks:
            x = block(x, mask)
        return self.out(self.norm(x[:, 0]))
