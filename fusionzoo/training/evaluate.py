"""Evaluation: accuracy, macro-F1 and loss, under any subset of modalities and added noise.

Legend: ``b`` batch, ``k`` classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["classification_metrics", "evaluate", "subsets", "add_noise", "move_batch", "NOISE_LEVELS"]

NOISE_LEVELS = (0.0, 0.25, 0.5, 1.0, 2.0)


def classification_metrics(confusion: Tensor, loss_sum: float) -> dict[str, float]:
    """Accuracy, macro-F1 (over classes that occur or are predicted) and mean loss from a ``[k, k]``
    confusion matrix (rows: true class)."""
    confusion = confusion.double()
    n = confusion.sum().item()
    tp = confusion.diag()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    seen = (confusion.sum(0) + confusion.sum(1)) > 0
    return {
        "accuracy": tp.sum().item() / max(n, 1),
        "macro_f1": f1[seen].mean().item() if seen.any() else 0.0,
        "loss": loss_sum / max(n, 1),
        "n": int(n),
    }


def move_batch(batch: dict, device: torch.device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {m: t.to(device, non_blocking=True) for m, t in v.items()}
        else:
            out[k] = v
    return out


def add_noise(batch: dict, modality: str, level: float, generator: torch.Generator) -> dict:
    """MultiBench-style corruption of one modality: Gaussian noise of ``level`` times the batch's
    standard deviation for float inputs (only inside the valid length of padded waveforms), and for
    token ids each non-padding token replaced by a random word with probability ``min(level, 1)``."""
    if level == 0 or modality not in batch:
        return batch
    x = batch[modality]
    out = dict(batch)
    if x.is_floating_point():
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
        noisy = x + level * x.std() * noise
        lengths = batch.get(f"{modality}_lengths")
        if lengths is not None:
            noisy = torch.where(torch.arange(x.shape[-1], device=x.device) < lengths[:, None], noisy, x)
        out[modality] = noisy
    else:
        high = int(x.max().item()) + 1
        replace = (torch.rand(x.shape, generator=generator, device="cpu") < min(level, 1.0)).to(x.device) & (x != 0)
        random_ids = torch.randint(2, max(high, 3), x.shape, generator=generator, device="cpu").to(x.device)
        out[modality] = torch.where(replace, random_ids, x)
    return out


def subsets(modalities: Iterable[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, largest first: all, each pair, ..., each single modality."""
    mods = sorted(modalities)
    return [c for r in range(len(mods), 0, -1) for c in combinations(mods, r)]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict],
    num_classes: int,
    device: torch.device | str = "cpu",
    keep: Iterable[str] | None = None,
    noise: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of ``model`` on ``loader`` seeing only the modalities in ``keep`` (default: all), with
    ``noise`` (``{modality: level}``) added. Removed modalities are dropped from the batch, which the
    model treats as missing for the whole batch."""
    device = torch.device(device)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    keep = None if keep is None else set(keep)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum = 0.0
    for batch in loader:
        batch = move_batch(batch, device)
        if keep is not None:
            batch = {k: v for k, v in batch.items() if k in keep or k == "label" or k.removesuffix("_lengths") in keep or k == "present"}
            batch["present"] = {m: p for m, p in batch.get("present", {}).items() if m in keep}
        for m, level in (noise or {}).items():
            batch = add_noise(batch, m, level, generator)
        logits = model(batch).float()
        labels = batch["label"]
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        pred = logits.argmax(dim=1)
        confusion += torch.bincount((labels * num_classes + pred).cpu(), minlength=num_classes**2).view(num_classes, num_classes)
    return classification_metrics(confusion, loss_sum)
