"""Label-budget subsets for low-label experiments."""

from __future__ import annotations

import numpy as np

__all__ = ["first_per_class", "hide_labels", "UNLABELLED"]

UNLABELLED = -1


def first_per_class(labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` samples of every class, in dataset order (deterministic)."""
    if k < 1:
        raise ValueError(f"labels_per_class must be at least 1, got {k}")
    labels = np.asarray(labels)
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:k]] = True
    return np.flatnonzero(keep)


def hide_labels(labels: np.ndarray, k: int) -> np.ndarray:
    """A copy of ``labels`` where all but the first ``k`` samples of each class read ``UNLABELLED``."""
    out = np.full(len(labels), UNLABELLED, dtype=np.int64)
    keep = first_per_class(labels, k)
    out[keep] = np.asarray(labels)[keep]
    return out
