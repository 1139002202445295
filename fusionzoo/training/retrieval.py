"""Cross-modal retrieval metrics for paired embeddings (row ``i`` of ``a`` matches row ``i`` of ``b``).

Legend: ``b`` batch, ``d`` embedding width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["retrieval_metrics"]


def _ranks(sim: Tensor) -> Tensor:
    """1-based rank of the true match (the diagonal) in each row; ties count in the match's favour."""
    return (sim > sim.diag()[:, None]).sum(dim=1) + 1


@torch.no_grad()
def retrieval_metrics(
    a: Tensor,
    b: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    names: tuple[str, str] = ("a", "b"),
    labels: Tensor | None = None,
) -> dict[str, float]:
    """Recall@k and median rank, ``a -> b`` (query a, find its b) and ``b -> a``, by cosine similarity.
    With ``labels``, also class-level recall@k: a hit is any item of the query's class among the top k
    (for data such as AV digits, where any image of the right digit is as good a match as its pair).

    Shapes: a, b ``[b, d]``; labels ``[b]``.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"retrieval: paired embeddings must both be [B, D], got {list(a.shape)} and {list(b.shape)}")
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
    out: dict[str, float] = {}
    for direction, s in ((f"{names[0]}->{names[1]}", sim), (f"{names[1]}->{names[0]}", sim.T)):
        ranks = _ranks(s).float()
        for k in ks:
            out[f"{direction} R@{k}"] = (ranks <= k).float().mean().item()
        out[f"{direction} median rank"] = ranks.median().item()
        if labels is not None:
            top = s.topk(max(ks), dim=1).indices  # [b, k]
            same = labels[top] == labels[:, None]
            for k in ks:
                out[f"{direction} class R@{k}"] = same[:, :k].any(dim=1).float().mean().item()
    return out
