"""Modality dropout: drop whole modalities per sample during training by editing ``present``.

Legend: ``b`` batch, ``m`` modality, ``n`` tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ModalityDropout"]


class ModalityDropout(nn.Module):
    """Drop each present modality of each sample with probability ``p`` (training mode only), never
    leaving a sample with fewer than ``min(min_present, modalities it had)`` modalities.

    ``forward(features, present)`` returns a new ``present`` dict with one entry per key of
    ``features``: sample-level ``[b]`` masks stay ``[b]``, token-level ``[b, n]`` masks lose the
    dropped samples' tokens. In eval mode ``present`` comes back unchanged (completed with all-True
    masks for keys it lacked). Sampling is vectorised: no Python loop over the batch.

    Shapes: ``features {m: [b, ...]}``, ``present {m: bool [b] or [b, n_m]}`` -> same as ``present``.
    """

    def __init__(self, p: float, min_present: int = 1) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"ModalityDropout: p must be in [0, 1], got {p}")
        if isinstance(min_present, bool) or not isinstance(min_present, int) or min_present < 0:
            raise ValueError(f"ModalityDropout: min_present must be a non-negative int, got {min_present!r}")
        self.p = p
        self.min_present = min_present

    def forward(
        self, features: dict[str, Tensor], present: dict[str, Tensor] | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        present = dict(present or {})
        for m in present:
            if m not in features:
                raise ValueError(f"ModalityDropout: present[{m!r}] is given but features has no {m!r}")
        mods = sorted(features)
        ref = features[mods[0]]
        b = ref.shape[0]
        full = {
            m: present[m] if m in present else torch.ones(b, dtype=torch.bool, device=features[m].device) for m in mods
        }
        if not self.training or self.p == 0.0:
            return full
        sample = torch.stack([full[m] if full[m].dim() == 1 else full[m].any(dim=1) for m in mods], dim=1)  # [b, m]
        u = torch.rand(sample.shape, generator=generator, device=sample.device)
        keep = sample & (u >= self.p)
        # Put back the dropped modalities with the highest u until each sample has enough.
        need = (torch.clamp(sample.sum(dim=1), max=self.min_present) - keep.sum(dim=1)).clamp(min=0)
        score = torch.where(sample & ~keep, u, torch.full_like(u, -1.0))
        rank = torch.argsort(torch.argsort(score, dim=1, descending=True), dim=1)
        keep = keep | ((sample & ~keep) & (rank < need.unsqueeze(1)))
        out = {}
        for j, m in enumerate(mods):
            mask = full[m]
            out[m] = mask & keep[:, j] if mask.dim() == 1 else mask & keep[:, j : j + 1]
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, min_present={self.min_present}"
