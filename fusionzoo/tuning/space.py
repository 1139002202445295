"""A search space in YAML: the ``tune:`` section of a config.

::

    tune:
      trials: 20                      # fusionzoo tune --trials overrides it
      pruner: median                  # median (default), hyperband or none
      prune_after: 2                  # epochs before which no trial is pruned (default: a third of them, at least 2)
      space:
        train.lr: {log_uniform: [1.0e-4, 1.0e-2]}
        train.modality_dropout: {uniform: [0, 0.5]}
        train.batch_size: {int: [32, 128]}        # or log_int
        model.fusion.hidden_dims: {choice: [[64], [128, 64]]}

Every key is a config path, as ``--set`` takes it; every value one distribution. A trial's config is
the base config with one ``key=value`` override per key (the ``tune:`` section dropped), so the best
trial's config is a plain config ``fusionzoo train`` takes. Before the first trial every bound and
every choice is applied alone and the config validated, so a misspelt key or a value out of range
is an error naming it, not a failed trial.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from fusionzoo.errors import ConfigError

__all__ = ["SearchSpace", "KINDS", "TUNE_KEYS", "PRUNERS"]

#: How a value is drawn: a float (uniform or log-uniform), an int (uniform or log-uniform), one of a list.
KINDS = ("uniform", "log_uniform", "int", "log_int", "choice")
TUNE_KEYS = ("space", "trials", "pruner", "prune_after")
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class Parameter:
    """One key of the space and its distribution (``bounds`` for a range, ``choices`` for a choice)."""

    key: str
    kind: str
    bounds: tuple[float, float] | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter for an Optuna trial (the drawn value, a choice as offered)."""
        if self.kind in ("uniform", "log_uniform"):
            return trial.suggest_float(self.key, *self.bounds, log=self.kind == "log_uniform")
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.key, int(self.bounds[0]), int(self.bounds[1]), log=self.kind == "log_int")
        return trial.suggest_categorical(self.key, [self.offered(c) for c in self.choices])

    def offered(self, choice: Any) -> Any:
        """A choice as Optuna takes it: a plain scalar as it is, anything else (``[128, 64]``) as its
        JSON text, which is also how the trials table shows it."""
        return choice if isinstance(choice, (str, int, float, bool)) or choice is None else json.dumps(choice)

    def value(self, drawn: Any) -> Any:
        """A drawn value as the config takes it (a choice's JSON text read back)."""
        if self.kind == "choice":
            return next(c for c in self.choices if self.offered(c) == drawn)
        return drawn

    def corners(self) -> list[Any]:
        """The values checked before the first trial: both bounds, every choice."""
        if self.kind == "choice":
            return list(self.choices)
        lo, hi = self.bounds
        return [int(lo), int(hi)] if self.kind in ("int", "log_int") else [lo, hi]


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a ``tune.space`` mapping, in the order written."""

    parameters: tuple[Parameter, ...]

    @classmethod
    def from_section(cls, section: Any, origin: str = "<dict>") -> SearchSpace:
        if not isinstance(section, Mapping) or not section:
            raise ConfigError(f"{origin}: tune.space: expected a mapping of config keys to distributions, e.g. "
                              "{train.lr: {log_uniform: [1.0e-4, 1.0e-2]}}, got " + repr(section))
        return cls(tuple(_parameter(key, spec, f"{origin}: tune.space.{key}") for key, spec in section.items()))

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """``key=value`` overrides for drawn values by key."""
        return [f"{p.key}={as_yaml(p.value(values[p.key]))}" for p in self.parameters]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Draw every parameter for an Optuna trial; returns the drawn values by key."""
        return {p.key: p.suggest(trial) for p in self.parameters}

    def describe(self, drawn: Mapping[str, Any]) -> str:
        """Drawn values in one short line: ``train.lr=0.00229, model.fusion.hidden_dims=[16]``."""
        def short(value: Any) -> str:
            return f"{value:.3g}" if isinstance(value, float) else as_yaml(value)

        return ", ".join(f"{p.key}={short(p.value(drawn[p.key]))}" for p in self.parameters if p.key in drawn)

    def corner_overrides(self) -> list[tuple[str, str]]:
        """``(key, override)`` for every bound and choice of every parameter, one at a time."""
        return [(p.key, f"{p.key}={as_yaml(v)}") for p in self.parameters for v in p.corners()]

    def to_dict(self) -> dict[str, Any]:
        return {p.key: {p.kind: list(p.choices) if p.kind == "choice" else list(p.bounds)} for p in self.parameters}


def as_yaml(value: Any) -> str:
    """A value as ``--set`` reads it back: YAML flow style (``1.0e-05``, ``[128, 64]``, ``{name: sgd}``)."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _parameter(key: Any, spec: Any, where: str) -> Parameter:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{where}: not a config path (write it as --set takes it: train.lr, model.fusion.hidden_dims)")
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{where}: expected one of {{{': ..., '.join(KINDS)}: ...}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or len(args) < 2:
            raise ConfigError(f"{where}.choice: expected a list of at least two values, got {args!r}")
        texts = [json.dumps(a, sort_keys=True) for a in args]
        if len(set(texts)) != len(texts):
            raise ConfigError(f"{where}.choice: a value is listed twice: {args!r}")
        return Parameter(key, kind, choices=tuple(args))
    return Parameter(key, kind, bounds=_bounds(kind, args, f"{where}.{kind}"))


def _bounds(kind: str, args: Any, where: str) -> tuple[float, float]:
    integer = kind in ("int", "log_int")
    numbers = isinstance(args, Sequence) and not isinstance(args, str) and len(args) == 2 and all(
        isinstance(a, int if integer else (int, float)) and not isinstance(a, bool) for a in args
    )
    if not numbers:
        raise ConfigError(f"{where}: expected [low, high], two {'ints' if integer else 'numbers'}, got {args!r}")
    lo, hi = args
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"{where}: expected low < high, got {args!r}")
    if kind.startswith("log") and lo <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got {args!r}")
    return (lo, hi) if integer else (float(lo), float(hi))


def check_tune_section(section: Any, origin: str) -> None:
    """The structure of ``tune:`` (its keys, the space, ``trials``, ``pruner``, ``prune_after``); the keys of the
    space against the config are checked by ``fusionzoo tune``, which applies each bound."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{origin}: tune: expected a mapping with space (and trials, pruner), got {section!r}")
    unknown = sorted(set(section) - set(TUNE_KEYS))
    if unknown:
        raise ConfigError(f"{origin}: tune.{unknown[0]}: unknown key (allowed: {', '.join(TUNE_KEYS)})")
    SearchSpace.from_section(section.get("space"), origin)
    trials = section.get("trials", 1)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"{origin}: tune.trials: expected an int >= 1, got {trials!r}")
    if section.get("pruner", "median") not in PRUNERS:
        raise ConfigError(f"{origin}: tune.pruner: one of {', '.join(PRUNERS)}, got {section.get('pruner')!r}")
    after = section.get("prune_after", 1)
    if isinstance(after, bool) or not isinstance(after, int) or after < 1:
        raise ConfigError(f"{origin}: tune.prune_after: expected an int >= 1 (epochs), got {after!r}")
