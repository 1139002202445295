"""Task types: what a head predicts, which loss trains it by default, and how it is scored.

Legend: ``b`` batch, ``k`` classes or labels, ``t`` regression targets.

A dataset names its task in ``dataset.task`` (``multiclass`` when it does not):

* ``multiclass``: one class per sample, ``long [b]`` labels (-1 = unlabelled); softmax head of ``k``
  outputs; ``cross_entropy``; accuracy, macro-F1, loss (cross-entropy).
* ``multilabel``: any set of labels per sample, ``float [b, k]`` 0/1 targets; one sigmoid per label;
  ``bce``; mAP (mean over labels with a positive of the average precision), micro-F1 and exact-match
  accuracy at probability 0.5, loss (binary cross-entropy).
* ``regression``: ``float [b]`` (one target, head ``out_dim: 1``) or ``[b, t]`` targets, NaN =
  unlabelled; ``mse``; MAE, RMSE, Pearson r (over all labelled values), loss (mean squared error).

Training sums a few statistics per batch on the device (:meth:`Task.stats`); evaluation scores all
of a split's outputs at once, in float64 (:meth:`Task.metrics`). ``metric_names`` are what a run can
select on; :func:`lower_is_better` says which way each one points.

A metric that the split cannot define (nothing labelled; mAP or micro-F1 without a positive label)
is NaN, never 0; a run refuses to select on it (:func:`~fusionzoo.training.engine.train`) and
writes it as ``null`` in its JSON files.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fusionzoo.losses.targets import regression_pairs

__all__ = ["Task", "TASKS", "get_task", "lower_is_better", "average_precision"]

_LOWER = ("loss", "mae", "rmse")


def lower_is_better(metric: str) -> bool:
    """Losses and errors (names ending in ``loss``, ``mae``, ``rmse``) are minimised, anything else maximised."""
    return metric.endswith(_LOWER)


class Task:
    """Base class; see the module docstring."""

    name: str = ""
    loss_tag: str = ""
    default_loss: str = ""
    default_metric: str = ""
    metric_names: tuple[str, ...] = ()
    stat_names: tuple[str, ...] = ()

    def stats(self, outputs: Tensor, labels: Tensor) -> list[Tensor]:
        """Per-batch sums (0-dim tensors, no host sync) named by ``stat_names``; the first is the
        number of labelled samples."""
        raise NotImplementedError

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def metrics(self, outputs: Tensor, labels: Tensor) -> dict[str, float]:
        raise NotImplementedError


class MultiClass(Task):
    name, loss_tag, default_loss, default_metric = "multiclass", "classification", "cross_entropy", "accuracy"
    metric_names = ("accuracy", "macro_f1", "loss")
    stat_names = ("labelled", "correct")

    def stats(self, outputs: Tensor, labels: Tensor) -> list[Tensor]:
        labelled = labels >= 0
        return [labelled.sum(), ((outputs.argmax(1) == labels) & labelled).sum()]

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        return {"accuracy": stats["correct"] / max(stats["labelled"], 1.0)}

    def metrics(self, outputs: Tensor, labels: Tensor) -> dict[str, float]:
        k = outputs.shape[1]
        keep = labels >= 0
        outputs, labels = outputs[keep].double(), labels[keep]
        confusion = torch.bincount(labels * k + outputs.argmax(1), minlength=k * k).view(k, k).double()
        n = int(keep.sum())
        tp = confusion.diag()
        precision = tp / confusion.sum(0).clamp(min=1)
        recall = tp / confusion.sum(1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        seen = (confusion.sum(0) + confusion.sum(1)) > 0
        if n == 0:  # nothing labelled: every metric is undefined, not 0
            return {"accuracy": math.nan, "macro_f1": math.nan, "loss": math.nan, "n": 0}
        return {
            "accuracy": tp.sum().item() / n,
            "macro_f1": f1[seen].mean().item(),
            "loss": F.cross_entropy(outputs, labels, reduction="sum").item() / n,
            "n": n,
        }


def average_precision(scores: Tensor, positives: Tensor) -> Tensor:
    """Average precision of one ranking per column: the mean, over the positives, of the precision
    among the samples scored at least as high (ties count against: a tie is ranked above). ``[b, k]``
    scores and 0/1 ``positives`` -> ``[k]``; NaN for a column without positives."""
    positives = positives.double()
    # For each positive i: hits(score >= s_i) / count(score >= s_i); O(b^2 k) memory-light per column.
    ap = []
    for c in range(scores.shape[1]):
        s, y = scores[:, c].double(), positives[:, c]
        pos = y > 0
        if not pos.any():
            ap.append(torch.tensor(float("nan"), dtype=torch.float64))
            continue
        order = torch.argsort(s, descending=True, stable=True)
        s_sorted, y_sorted = s[order], y[order]
        hits = y_sorted.cumsum(0)
        # With ties, the precision at a positive is taken after the whole tie group.
        last = torch.searchsorted(-s_sorted, -s_sorted, right=True) - 1
        precision = hits[last] / (last + 1).double()
        ap.append((precision * y_sorted).sum() / y_sorted.sum())
    return torch.stack(ap)


class MultiLabel(Task):
    name, loss_tag, default_loss, default_metric = "multilabel", "multilabel", "bce", "mAP"
    metric_names = ("mAP", "micro_f1", "exact_match", "loss")
    stat_names = ("labelled", "tp", "fp", "fn")

    def stats(self, outputs: Tensor, labels: Tensor) -> list[Tensor]:
        pred, truth = outputs > 0, labels > 0.5
        return [labels.new_tensor(labels.shape[0]), (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()]

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        return {"micro_f1": 2 * stats["tp"] / max(2 * stats["tp"] + stats["fp"] + stats["fn"], 1.0)}

    def metrics(self, outputs: Tensor, labels: Tensor) -> dict[str, float]:
        outputs, labels = outputs.double(), labels.double()
        pred, truth = outputs > 0, labels > 0.5
        tp, fp, fn = (pred & truth).sum().item(), (pred & ~truth).sum().item(), (~pred & truth).sum().item()
        ap = average_precision(outputs, labels)
        scored = ~torch.isnan(ap)
        n = labels.shape[0]
        return {  # undefined (NaN), not 0: mAP and micro-F1 without a single positive label, all of them without samples
            "mAP": ap[scored].mean().item() if scored.any() else math.nan,
            "micro_f1": 2 * tp / (2 * tp + fp + fn) if tp + fn > 0 else math.nan,
            "exact_match": (pred == truth).all(1).double().mean().item() if n else math.nan,
            "loss": F.binary_cross_entropy_with_logits(outputs, labels).item() if n else math.nan,
            "n": n,
        }


class Regression(Task):
    name, loss_tag, default_loss, default_metric = "regression", "regression", "mse", "mae"
    metric_names = ("mae", "rmse", "pearson_r", "loss")
    stat_names = ("labelled", "abs_err", "sq_err")

    def stats(self, outputs: Tensor, labels: Tensor) -> list[Tensor]:
        outputs, labels = regression_pairs(outputs, labels)
        labelled = ~torch.isnan(labels)
        err = torch.where(labelled, outputs.detach() - labels, 0.0)
        return [labelled.sum(), err.abs().sum(), (err**2).sum()]

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        n = max(stats["labelled"], 1.0)
        return {"mae": stats["abs_err"] / n, "rmse": (stats["sq_err"] / n) ** 0.5}

    def metrics(self, outputs: Tensor, labels: Tensor) -> dict[str, float]:
        outputs, labels = regression_pairs(outputs, labels)
        keep = ~torch.isnan(labels)
        x, y = outputs[keep].double(), labels[keep].double()
        err = x - y
        xc, yc = x - x.mean(), y - y.mean()
        denom = (xc.square().sum() * yc.square().sum()).sqrt()
        n = int(keep.sum())
        return {
            "mae": err.abs().mean().item() if n else float("nan"),
            "rmse": err.square().mean().sqrt().item() if n else float("nan"),
            "pearson_r": (xc * yc).sum().div(denom).item() if n > 1 and denom > 0 else float("nan"),
            "loss": err.square().mean().item() if n else float("nan"),
            "n": n,
        }


TASKS: dict[str, Task] = {t.name: t for t in (MultiClass(), MultiLabel(), Regression())}


def get_task(source: Any = "multiclass") -> Task:
    """A task itself, the task of a name, or of a dataset (its ``task`` attribute, ``multiclass`` without one)."""
    if isinstance(source, Task):
        return source
    if isinstance(source, (int, float)):
        raise TypeError(f"expected a task, a task name or a dataset, got {type(source).__name__} {source!r}")
    name = source if isinstance(source, str) else getattr(source, "task", "multiclass")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
