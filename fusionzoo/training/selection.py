"""Model selection and early stopping on the validation split, read from a run's history.

Everything is a function of ``history`` (one record per epoch, ``record["val"]`` the validation
metrics), so a resumed run reaches the same best epoch and the same stopping decision as an
uninterrupted one without saving anything extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fusionzoo.training.tasks import lower_is_better

__all__ = ["Selection"]


@dataclass(frozen=True)
class Selection:
    """Select on ``metric`` of the validation split (``mode`` ``max`` or ``min``): an epoch is the new
    best when it beats the best so far by more than ``min_delta``; with ``patience``, training stops
    after that many epochs without a new best."""

    metric: str
    mode: str = "max"
    min_delta: float = 0.0
    patience: int | None = None

    @classmethod
    def for_metric(cls, metric: str, early_stopping: Mapping[str, Any] | None = None) -> Selection:
        """Losses and errors (``loss``, ``mae``, ``rmse``) are minimised, any other metric maximised."""
        stop = early_stopping or {}
        return cls(metric, "min" if lower_is_better(metric) else "max", float(stop.get("min_delta", 0.0)), stop.get("patience"))

    def value(self, record: Mapping[str, Any]) -> float:
        return float(record["val"][self.metric])

    def improves(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best + self.min_delta if self.mode == "max" else value < best - self.min_delta

    def best(self, history: Sequence[Mapping[str, Any]]) -> tuple[int | None, float | None]:
        """``(best epoch, its validation value)``; ``(None, None)`` before the first epoch."""
        epoch, best = None, None
        for record in history:
            value = self.value(record)
            if self.improves(value, best):
                epoch, best = record["epoch"], value
        return epoch, best

    def is_best(self, history: Sequence[Mapping[str, Any]]) -> bool:
        """Whether the last epoch of ``history`` is the best so far."""
        return bool(history) and self.best(history)[0] == history[-1]["epoch"]

    def should_stop(self, history: Sequence[Mapping[str, Any]]) -> bool:
        if self.patience is None or not history:
            return False
        epoch, _ = self.best(history)
        return history[-1]["epoch"] - epoch >= self.patience
