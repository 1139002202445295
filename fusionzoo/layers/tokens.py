"""Joint token sequence for early-fusion attention blocks.

Legend: ``b`` batch, ``m`` modality, ``n`` tokens, ``d`` features, ``h`` model width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["ModalityTokens"]


class ModalityTokens(nn.Module):
    """Project each modality's tokens to ``hidden_dim``, add a learned modality-type embedding, and
    concatenate them after ``num_special`` learned, always-attendable tokens (a CLS or null token).

    Shapes: ``({m: [b, n_m, d_m]}, {m: bool [b, n_m]}) -> ([b, s + sum n_m, h], bool [b, s + sum n_m])``
    with ``s = num_special``.
    """

    def __init__(self, in_dims: Mapping[str, int], hidden_dim: int, num_special: int = 1) -> None:
        super().__init__()
        self.modalities = tuple(sorted(in_dims))
        self.proj = nn.ModuleDict({m: nn.Linear(in_dims[m], hidden_dim) for m in self.modalities})
        self.type_embed = nn.Parameter(0.02 * torch.randn(len(self.modalities), hidden_dim))
        self.special = nn.Parameter(0.02 * torch.randn(1, num_special, hidden_dim))

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor] | None) -> tuple[Tensor, Tensor | None]:
        """``present=None`` (nothing missing) gives a ``None`` mask: attention without a mask."""
        b = features[self.modalities[0]].shape[0]
        tokens = [self.special.expand(b, -1, -1)]
        for i, m in enumerate(self.modalities):
            tokens.append(self.proj[m](features[m]) + self.type_embed[i])
        if present is None:
            return torch.cat(tokens, dim=1), None
        masks = [torch.ones(b, self.special.shape[1], dtype=torch.bool, device=self.special.device)]
        masks += [present[m] for m in self.modalities]
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)
