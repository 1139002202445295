"""Model selection and early stopping on the validation split, read from a run's history.

Everything is a function of ``history`` (one record per epoch, ``record["val"]`` the validation
metrics), so a resumed run reaches the same best epoch and the same stopping decision as an
uninterrupted one without saving anything extra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fusionzoo.training.tasks import lower_is_better

__all__ = ["Selection"]


@dataclass(frozen=True)
class Selection:
    """Select on ``metric`` of the validation split (``mode`` ``max`` or ``min``): the best epoch has
    the best value (the earliest on a tie; NaN never is). ``min_delta`` is for stopping only: with
    ``patience``, training stops after that many epochs without an improvement by more than
    ``min_delta`` on the best value so far."""

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
        value = record["val"][self.metric]
        return math.nan if value is None else float(value)  # None: undefined (NaN in metrics.json)

    def improves(self, value: float, best: float | None, by: float = 0.0) -> bool:
        """Whether ``value`` beats ``best`` by more than ``by`` (any finite value beats None; NaN nothing)."""
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value > best + by if self.mode == "max" else value < best - by

    def best(self, history: Sequence[Mapping[str, Any]]) -> tuple[int | None, float | None]:
        """``(best epoch, its validation value)``; ``(None, None)`` before the first epoch with a value."""
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
        """Whether ``patience`` epochs have passed since the last epoch that improved by more than
        ``min_delta`` on the value of the previous such epoch (as Keras' ``EarlyStopping``)."""
        if self.patience is None or not history:
            return False
        improved, reference = 0, None
        for record in history:
            value = self.value(record)
            if self.improves(value, reference, self.min_delta):
                improved, reference = record["epoch"], value
        return history[-1]["epoch"] - improved >= self.patience
