"""Grouped k-fold cross-validation: which fold each sample belongs to, and the splits of one fold.

A dataset takes ``folds: {k: K, fold: F, seed: S}`` (the ``manifest`` also ``group: COLUMN``). The
samples are dealt into ``K`` folds once: a sample's group (a speaker, a patient, a recording
session) goes whole into one fold, the groups dealt largest first to the fold with the fewest
samples (ties broken by a seeded shuffle); samples without a group are dealt class by class,
round-robin after a seeded shuffle (stratified). Fold ``F`` is the test split, fold ``F + 1``
(cyclically) the validation split, the rest the training split: over the ``K`` folds every sample
is tested exactly once, and no group is ever split across train, val and test. What a dataset fits
(a vocabulary, a label list, a PCA) it fits on the training split of each fold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["assign_folds", "fold_splits", "check_folds"]

FOLD_KEYS = ("k", "fold", "seed", "group")


def check_folds(folds: Any, where: str = "folds", group: bool = False) -> dict[str, Any]:
    """``folds`` as ``{k, fold, seed[, group]}`` with ``k >= 3`` (train, val and test each need a
    fold) and ``0 <= fold < k``."""
    allowed = FOLD_KEYS if group else FOLD_KEYS[:3]
    if not isinstance(folds, Mapping) or "k" not in folds:
        raise ValueError(f"{where}: {{k: K, fold: F, seed: S{', group: COLUMN' if group else ''}}}, got {folds!r}")
    unknown = sorted(set(folds) - set(allowed))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(allowed)})")
    k, fold, seed = folds["k"], folds.get("fold", 0), folds.get("seed", 0)
    for key, value in (("k", k), ("fold", fold), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}.{key}: an int, got {value!r}")
    if k < 3:
        raise ValueError(f"{where}.k: at least 3 folds (one each for test and validation), got {k}")
    if not 0 <= fold < k:
        raise ValueError(f"{where}.fold: in [0, {k}), got {fold}")
    return {"k": k, "fold": fold, "seed": seed, **({"group": folds["group"]} if group and "group" in folds else {})}


def assign_folds(strata: Sequence[Any], groups: Sequence[Any] | None, k: int, seed: int) -> np.ndarray:
    """``int [n]``: each sample's fold (see the module docstring). ``groups[i]`` None (or no
    ``groups``): sample ``i`` has no group and is dealt by its stratum (its class)."""
    n = len(strata)
    rng = np.random.default_rng(seed)
    fold_of = np.full(n, -1, dtype=np.int64)
    sizes = np.zeros(k, dtype=np.int64)
    grouped: dict[Any, list[int]] = {}
    for i, g in enumerate(groups if groups is not None else [None] * n):
        if g is not None:
            grouped.setdefault(g, []).append(i)
    names = sorted(grouped, key=str)
    order = [names[j] for j in rng.permutation(len(names))]
    for g in sorted(order, key=lambda g: -len(grouped[g])):  # stable: the shuffle breaks ties
        target = int(np.argmin(sizes))
        fold_of[grouped[g]] = target
        sizes[target] += len(grouped[g])
    free = np.flatnonzero(fold_of < 0)
    for stratum in sorted({strata[i] for i in free}, key=str):
        members = np.array([i for i in free if strata[i] == stratum])
        members = members[rng.permutation(len(members))]
        for i in members:
            target = int(np.argmin(sizes))
            fold_of[i] = target
            sizes[target] += 1
    return fold_of


def fold_splits(fold_of: np.ndarray, k: int, fold: int) -> list[str]:
    """``train``/``val``/``test`` of each sample for fold ``fold``: test is that fold, val the next."""
    val = (fold + 1) % k
    return ["test" if f == fold else "val" if f == val else "train" for f in fold_of.tolist()]
