"""The ``train:`` section of a config, as a typed, validated dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fusionzoo.registry import closest

__all__ = ["TrainSettings"]


@dataclass(frozen=True)
class TrainSettings:
    """Training options; every field is a key of the config's ``train:`` section.

    ``warmup_epochs`` may be fractional (linear warm-up over that many epochs of steps, then cosine
    decay to 0). ``amp`` means bf16 autocast on CUDA; on the CPU training is always float32.
    ``progress`` ``None`` shows a progress bar only on a terminal and never under CI.
    ``init_from`` (``{path, key_map, freeze, strict_shapes}``) loads weights before training (a run
    directory or a weights file), ``lr_mult`` maps parameter-name patterns to learning-rate
    multipliers, and ``strategy`` is ``finetune``, ``linear_probe`` or ``gradual``.
    ``distill`` (``{teacher, temperature, alpha}``) adds a soft-target term from a trained teacher run
    (any modalities) on every sample, labelled or not; ``aux_heads`` (``{weighting, weights}``) adds
    one classifier per modality on its encoder's features and combines the fused and per-modality
    losses with the ``multitask`` loss (``fixed``, ``uncertainty`` or ``dwa``).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    modality_dropout: float = 0.0
    min_present: int = 1
    amp: bool = True
    compile: bool = False
    num_workers: int = 0
    device: str = "auto"
    progress: bool | None = None
    keep_checkpoints: int = 2
    init_from: dict | None = None
    lr_mult: dict | None = None
    strategy: str = "finetune"
    distill: dict | None = None
    aux_heads: dict | None = None

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None, origin: str = "<dict>") -> TrainSettings:
        from fusionzoo.config import ConfigError

        section = dict(section or {})
        known = {f.name: f for f in fields(cls)}
        for key in section:
            if key not in known:
                hint = closest(key, sorted(known), n=1)
                raise ConfigError(f"{origin}: train.{key}: unknown key" + (f"; did you mean {hint[0]}?" if hint else ""))
        settings = cls(**section)
        checks = {
            "epochs": settings.epochs >= 1,
            "batch_size": settings.batch_size >= 1,
            "lr": settings.lr > 0,
            "weight_decay": settings.weight_decay >= 0,
            "warmup_epochs": 0 <= settings.warmup_epochs <= settings.epochs,
            "grad_clip": settings.grad_clip is None or settings.grad_clip > 0,
            "label_smoothing": 0 <= settings.label_smoothing < 1,
            "modality_dropout": 0 <= settings.modality_dropout <= 1,
            "min_present": settings.min_present >= 0,
            "num_workers": settings.num_workers >= 0,
            "device": settings.device in ("auto", "cpu", "cuda"),
            "keep_checkpoints": settings.keep_checkpoints >= 1,
        }
        checks["strategy"] = settings.strategy in ("finetune", "linear_probe", "gradual")
        checks["lr_mult"] = settings.lr_mult is None or (
            isinstance(settings.lr_mult, dict) and all(isinstance(v, (int, float)) and v >= 0 for v in settings.lr_mult.values())
        )
        if settings.init_from is not None:
            init = settings.init_from
            if not isinstance(init, dict) or "path" not in init:
                raise ConfigError(f"{origin}: train.init_from: expected {{path, key_map, freeze, strict_shapes}}, got {init!r}")
            for key in init:
                if key not in ("path", "key_map", "freeze", "strict_shapes"):
                    raise ConfigError(f"{origin}: train.init_from.{key}: unknown key (path, key_map, freeze, strict_shapes)")
        for name, allowed in (("distill", ("teacher", "temperature", "alpha")), ("aux_heads", ("weighting", "weights", "temperature"))):
            section = getattr(settings, name)
            if section is None:
                continue
            if not isinstance(section, dict):
                raise ConfigError(f"{origin}: train.{name}: expected a mapping, got {section!r}")
            for key in section:
                if key not in allowed:
                    raise ConfigError(f"{origin}: train.{name}.{key}: unknown key ({', '.join(allowed)})")
        if settings.distill is not None and "teacher" not in settings.distill:
            raise ConfigError(f"{origin}: train.distill.teacher: required (a trained run directory)")
        if settings.distill is not None and settings.aux_heads is not None:
            raise ConfigError(f"{origin}: train.distill: cannot be combined with train.aux_heads")
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"{origin}: train.{key}: invalid value {getattr(settings, key)!r}")
        for key in ("epochs", "batch_size", "min_present", "num_workers", "keep_checkpoints"):
            value = getattr(settings, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{origin}: train.{key}: expected an int, got {value!r}")
        return settings
