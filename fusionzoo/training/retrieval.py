"""Cross-modal retrieval metrics for paired embeddings (row ``i`` of ``a`` matches row ``i`` of ``b``),
and zero-shot classification through class-mean embeddings.

Legend: ``b`` batch, ``d`` embedding width.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionzoo.training.evaluate import move_batch

__all__ = ["retrieval_metrics", "embed", "zero_shot_accuracy"]


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
            top = s.topk(min(max(ks), s.shape[1]), dim=1).indices  # [b, k]; every candidate when there are fewer than k
            same = labels[top] == labels[:, None]
            for k in ks:
                out[f"{direction} class R@{k}"] = same[:, :k].any(dim=1).float().mean().item()
    return out


@torch.no_grad()
def embed(model: nn.Module, loader: Iterable[dict], device: torch.device | str = "cpu") -> tuple[dict[str, Tensor], Tensor]:
    """Every sample's embedding for each modality (``model(batch) -> {m: [b, d]}``), and the labels."""
    model.eval()
    out: dict[str, list[Tensor]] = {}
    labels = []
    for batch in loader:
        batch = move_batch(batch, device)
        for m, e in model(batch).items():
            out.setdefault(m, []).append(e.float().cpu())
        labels.append(batch["label"].cpu())
    return {m: torch.cat(v) for m, v in out.items()}, torch.cat(labels)


def zero_shot_accuracy(query: Tensor, labels: Tensor, support: Tensor, support_labels: Tensor, num_classes: int) -> float:
    """Each query takes the class whose mean (normalised) support embedding is nearest by cosine:
    classification of one modality with no classifier trained on it.

    Shapes: query ``[b, d]``, labels ``[b]``, support ``[s, d]``, support_labels ``[s]``.
    """
    means = torch.stack([F.normalize(support[support_labels == c], dim=-1).mean(0) for c in range(num_classes)])
    pred = (F.normalize(query, dim=-1) @ F.normalize(means, dim=-1).T).argmax(1)
    return (pred == labels).float().mean().item()
