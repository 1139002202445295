"""Evaluation: a task's metrics (:mod:`~fusionzoo.training.tasks`) under any subset of modalities and
added noise.

Legend: ``b`` batch, ``k`` classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import combinations

import torch
from torch import Tensor, nn

from fusionzoo.training.tasks import Task, get_task

__all__ = ["evaluate", "subsets", "add_noise", "keep_modalities", "modality_of", "move_batch", "NOISE_LEVELS"]

NOISE_LEVELS = (0.0, 0.25, 0.5, 1.0, 2.0)


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
    token ids each non-padding token replaced by a random word with probability ``min(level, 1)``.
    A preprocessed dict input (token ids or audio with their ``attention_mask``) is corrupted inside
    its mask, the mask itself untouched."""
    if level == 0 or modality not in batch:
        return batch
    x = batch[modality]
    out = dict(batch)
    if isinstance(x, dict):
        mask = x.get("attention_mask")
        valid = None if mask is None else mask.bool()
        out[modality] = {k: v if k in ("attention_mask", "token_type_ids") else _noisy(v, level, generator, valid) for k, v in x.items()}
        return out
    valid = None
    lengths = batch.get(f"{modality}_lengths")
    if x.is_floating_point() and lengths is not None:
        valid = torch.arange(x.shape[-1], device=x.device) < lengths[:, None]
    out[modality] = _noisy(x, level, generator, valid if x.is_floating_point() else x != 0)
    return out


def _noisy(x: Tensor, level: float, generator: torch.Generator, valid: Tensor | None) -> Tensor:
    """``x`` corrupted where ``valid`` (a bool mask broadcastable to ``x``; None: everywhere)."""
    if x.is_floating_point():
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
        noisy = x + level * x.std() * noise
        return noisy if valid is None else torch.where(valid, noisy, x)
    high = int(x.max().item()) + 1
    replace = (torch.rand(x.shape, generator=generator, device="cpu") < min(level, 1.0)).to(x.device)
    if valid is not None:
        replace = replace & valid
    random_ids = torch.randint(2, max(high, 3), x.shape, generator=generator, device="cpu").to(x.device)
    return torch.where(replace, random_ids, x)


def modality_of(key: str) -> str:
    """The modality a batch key belongs to: ``audio_lengths``, ``text_features`` -> ``audio``, ``text``."""
    for suffix in ("_features_mask", "_features", "_lengths"):
        if key.endswith(suffix):
            return key.removesuffix(suffix)
    return key


def keep_modalities(batch: dict, keep: set[str]) -> dict:
    """``batch`` with only the modalities in ``keep`` (their inputs, lengths, cached features and
    presence): the others are absent, which the model treats as missing for the whole batch."""
    out = {k: v for k, v in batch.items() if k == "label" or (k != "present" and modality_of(k) in keep)}
    out["present"] = {m: p for m, p in batch.get("present", {}).items() if m in keep}
    return out


def subsets(modalities: Iterable[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, largest first: all, each pair, ..., each single modality."""
    mods = sorted(modalities)
    return [c for r in range(len(mods), 0, -1) for c in combinations(mods, r)]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict],
    task: Task | str = "multiclass",
    device: torch.device | str = "cpu",
    keep: Iterable[str] | None = None,
    noise: Mapping[str, float] | None = None,
    seed: int = 0,
    predictions: dict[str, Tensor] | None = None,
) -> dict[str, float]:
    """``task``'s metrics of ``model`` on ``loader`` seeing only the modalities in ``keep`` (default:
    all), with ``noise`` (``{modality: level}``) added. Removed modalities are dropped from the batch,
    which the model treats as missing for the whole batch. ``predictions``, when given, receives the
    ``outputs`` and ``labels`` the metrics were computed from, in the loader's order."""
    task = get_task(task)
    device = torch.device(device)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    keep = None if keep is None else set(keep)
    outputs, labels = [], []
    for batch in loader:
        batch = move_batch(batch, device)
        if keep is not None:
            batch = keep_modalities(batch, keep)
        for m, level in (noise or {}).items():
            batch = add_noise(batch, m, level, generator)
        outputs.append(model(batch).float().cpu())
        labels.append(batch["label"].cpu())
    if not outputs:
        raise ValueError("evaluate: the loader yielded no batch")
    if predictions is not None:
        predictions.update(outputs=torch.cat(outputs), labels=torch.cat(labels))
        return task.metrics(predictions["outputs"], predictions["labels"])
    return task.metrics(torch.cat(outputs), torch.cat(labels))
