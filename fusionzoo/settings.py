"""The ``train:`` section of a config, as a typed, validated dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fusionzoo.errors import ConfigError
from fusionzoo.registry import closest
from fusionzoo.transfer import STRATEGIES

__all__ = ["TrainSettings"]

INT_KEYS = ("epochs", "batch_size", "min_present", "num_workers", "keep_checkpoints", "log_every")
FLOAT_KEYS = ("lr", "weight_decay", "warmup_epochs", "grad_clip", "modality_dropout", "ema")
BOOL_KEYS = ("decay_norms_and_biases", "amp", "compile", "progress", "cache_frontend")
NULLABLE = ("grad_clip", "progress")
SUBSECTIONS = {
    "init_from": ("path", "key_map", "include", "exclude", "freeze", "strict_shapes", "allow_empty"),
    "regularize": ("l2sp",),
    "distill": ("teacher", "temperature", "alpha", "beta"),
    "aux_heads": ("weighting", "weights", "temperature"),
    "early_stopping": ("patience", "min_delta"),
}
MOVED = {"label_smoothing": "write train.loss: {name: cross_entropy, label_smoothing: 0.1}"}


@dataclass(frozen=True)
class TrainSettings:
    """Training options; every field is a key of the config's ``train:`` section.

    ``loss`` picks the classification loss from ``LOSSES`` (``{name: cross_entropy,
    label_smoothing: 0.1}``, ``{name: focal, gamma: 2}``; default cross-entropy); alignment configs
    name theirs in ``align.loss``. ``optimizer`` picks the optimizer from ``OPTIMIZERS``
    (``{name: adamw}`` by default, or ``{name: sgd, momentum: 0.9, nesterov: true}``); ``lr`` and
    ``weight_decay`` are given here, not in that section. ``decay_norms_and_biases: false`` exempts
    biases and normalisation weights (every parameter with fewer than 2 dimensions) from weight decay.
    ``warmup_epochs`` may be fractional (linear warm-up over that many epochs of steps, then cosine
    decay to 0). ``amp`` means bf16 autocast on CUDA; on the CPU training is always float32.
    ``cache_frontend: true`` computes every audio encoder's log-mel front end once per sample and
    keeps it (:class:`~fusionzoo.data.FrontendCache`; the data must give the same waveform on every
    read of a sample, which is checked).
    ``feature_cache`` (``none``, ``memory`` or ``disk``, in ``feature_cache_dir``, default
    ``~/.cache/fusionzoo/features``) computes the output of every frozen encoder (no trainable
    parameter: ``strategy: linear_probe``, ``init_from.freeze``) once per sample and trains the rest
    of the model on it (:mod:`fusionzoo.training.feature_cache`); an encoder whose input is augmented
    at random keeps running, with a notice. An encoder left without trainable parameters always runs
    in eval mode (a fixed feature extractor: no dropout, BatchNorm statistics fixed), cached or not.
    ``progress`` ``None`` shows a progress bar only on a terminal and never under CI.
    ``init_from`` (``{path, key_map, include, exclude, freeze, strict_shapes, allow_empty}``) loads
    weights before training (a run directory or a weights file; ``include`` / ``exclude`` are name
    patterns that pick what is transferred, e.g. the lower layers only; loading no tensor at all is an
    error unless ``allow_empty: true``), ``regularize: {l2sp: ALPHA}`` adds L2-SP (Li et al. 2018),
    ``ALPHA / 2 * ||w - w_source||^2`` over the loaded parameters, which then get no weight decay
    towards zero; ``lr_mult`` maps parameter-name patterns to learning-rate multipliers, and
    ``strategy`` is ``finetune``, ``linear_probe`` or ``gradual`` (one modality's encoder unfrozen per
    epoch, or one group of ``gradual_groups`` per epoch: lists of name patterns, top layers first).
    ``distill`` (``{teacher, temperature, alpha, beta}``) adds a soft-target term from a trained teacher
    run (any modalities) on every sample, labelled or not, and with ``beta > 0`` a feature term:
    ``beta * MSE(proj(student fused features), teacher fused features)`` through a learned
    projection; ``aux_heads`` (``{weighting, weights}``) adds
    one classifier per modality on its encoder's features and combines the fused and per-modality
    losses with the ``multitask`` loss (``fixed``, ``uncertainty`` or ``dwa``).

    Selection is on the validation split, never on test: each epoch is evaluated on ``val``;
    ``select_metric`` (default: the objective's, ``accuracy`` for classification, mean ``R@1`` for
    alignment; ``macro_f1`` and ``loss`` are the other classification choices) picks
    ``checkpoints/best``; ``early_stopping`` (``{patience, min_delta}``) ends training after
    ``patience`` epochs without an improvement larger than ``min_delta``; ``select`` (``best`` or
    ``last``) is the checkpoint that ``test`` is evaluated on, once, after the last epoch.

    ``ema`` (default 0: off): the decay of an exponential moving average of the weights (and
    BatchNorm statistics), updated after every optimizer step (``torch.optim.swa_utils.AveragedModel``);
    with it on, validation, selection, the checkpoints' ``model.safetensors``, test and everything
    that loads a run use the averaged weights, and ``state.pt`` keeps the trained ones for
    ``--resume``. 0.99 averages over about the last 100 steps.

    ``on_nonfinite``: ``stop`` (default) ends the run with an error naming the epoch and step of the
    first non-finite loss, before that epoch's checkpoint is written; ``skip_batch`` skips a batch
    whose loss or gradients are not finite (and restores the BatchNorm statistics it touched),
    counting them in the epoch's ``skipped_batches``.

    ``loggers`` (``[tensorboard, mlflow]``, or ``{name: mlflow, tracking_uri: ..., experiment: ...}``
    entries; default none) send the training loss and learning rate every ``log_every`` optimizer
    steps, each epoch's metrics, the test metrics and the config to tracking tools
    (:mod:`fusionzoo.training.loggers`); ``log.jsonl`` is written either way.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    optimizer: dict = field(default_factory=lambda: {"name": "adamw"})
    decay_norms_and_biases: bool = True
    loss: dict | None = None
    warmup_epochs: float = 0.5
    grad_clip: float | None = 1.0
    modality_dropout: float = 0.0
    ema: float = 0.0
    min_present: int = 1
    amp: bool = True
    compile: bool = False
    cache_frontend: bool = False
    feature_cache: str = "none"
    feature_cache_dir: str | None = None
    num_workers: int = 0
    device: str = "auto"
    progress: bool | None = None
    keep_checkpoints: int = 2
    init_from: dict | None = None
    regularize: dict | None = None
    gradual_groups: list | None = None
    lr_mult: dict | None = None
    strategy: str = "finetune"
    distill: dict | None = None
    aux_heads: dict | None = None
    select: str = "best"
    select_metric: str | None = None
    early_stopping: dict | None = None
    on_nonfinite: str = "stop"
    loggers: list = field(default_factory=list)
    log_every: int = 10

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None, origin: str = "<dict>") -> TrainSettings:
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        for key in section:
            if key in MOVED:
                raise ConfigError(f"{origin}: train.{key}: moved; {MOVED[key]}")
            if key not in known:
                hint = closest(key, sorted(known), n=1)
                raise ConfigError(f"{origin}: train.{key}: unknown key" + (f"; did you mean {hint[0]}?" if hint else ""))
        for key in INT_KEYS:
            value = section.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{origin}: train.{key}: expected an int, got {value!r}")
        for key in FLOAT_KEYS:
            if key in section and not (section[key] is None and key in NULLABLE):
                section[key] = _number(section[key], f"{origin}: train.{key}")
        for key in BOOL_KEYS:
            value = section.get(key, False)
            if not isinstance(value, bool) and not (value is None and key in NULLABLE):
                raise ConfigError(f"{origin}: train.{key}: expected true or false, got {value!r}")
        for name, allowed in SUBSECTIONS.items():
            _check_subsection(section.get(name), name, allowed, origin)
        settings = cls(**section)
        settings._check_values(origin)
        return settings

    def _check_values(self, origin: str) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": isinstance(self.lr, (int, float)) and self.lr > 0,
            "weight_decay": isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0,
            "warmup_epochs": 0 <= self.warmup_epochs <= self.epochs,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "modality_dropout": 0 <= self.modality_dropout <= 1,
            "ema": 0 <= self.ema < 1,
            "min_present": self.min_present >= 0,
            "num_workers": self.num_workers >= 0,
            "device": self.device in ("auto", "cpu", "cuda"),
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "strategy": self.strategy in STRATEGIES,
            "feature_cache": self.feature_cache in ("none", "memory", "disk"),
            "feature_cache_dir": self.feature_cache_dir is None or (isinstance(self.feature_cache_dir, str) and self.feature_cache == "disk"),
            "select": self.select in ("best", "last"),
            "on_nonfinite": self.on_nonfinite in ("stop", "skip_batch"),
            "log_every": self.log_every >= 1,
            "select_metric": self.select_metric is None or isinstance(self.select_metric, str),
            "optimizer": isinstance(self.optimizer, dict) and isinstance(self.optimizer.get("name"), str),
            "loss": self.loss is None or (isinstance(self.loss, dict) and isinstance(self.loss.get("name"), str)),
            "lr_mult": self.lr_mult is None or (
                isinstance(self.lr_mult, dict) and all(isinstance(v, (int, float)) and v >= 0 for v in self.lr_mult.values())
            ),
        }
        for key, ok in checks.items():
            if not ok and key in ("loss", "optimizer") and isinstance(getattr(self, key), str):
                raise ConfigError(f"{origin}: train.{key}: write {{name: {getattr(self, key)}}} (a mapping: the name and its options)")
            if not ok:
                raise ConfigError(f"{origin}: train.{key}: invalid value {getattr(self, key)!r}")
        stop = self.early_stopping
        if stop is not None:
            patience, min_delta = stop.get("patience"), stop.get("min_delta", 0.0)
            if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
                raise ConfigError(f"{origin}: train.early_stopping.patience: expected an int >= 1, got {patience!r}")
            if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or min_delta < 0:
                raise ConfigError(f"{origin}: train.early_stopping.min_delta: expected a number >= 0, got {min_delta!r}")
        if self.regularize is not None:
            l2sp = self.regularize.get("l2sp")
            if isinstance(l2sp, bool) or not isinstance(l2sp, (int, float)) or l2sp < 0:
                raise ConfigError(f"{origin}: train.regularize.l2sp: expected a number >= 0, got {l2sp!r}")
            if self.init_from is None:
                raise ConfigError(f"{origin}: train.regularize.l2sp: needs train.init_from (the source weights it pulls towards)")
        groups = self.gradual_groups
        if groups is not None:
            if self.strategy != "gradual":
                raise ConfigError(f"{origin}: train.gradual_groups: only used with strategy: gradual")
            if not isinstance(groups, list) or not groups or not all(isinstance(g, list) and g and all(isinstance(p, str) for p in g) for g in groups):
                raise ConfigError(f"{origin}: train.gradual_groups: expected a list of lists of name patterns, got {groups!r}")
        for key in ("include", "exclude"):
            value = (self.init_from or {}).get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(p, str) for p in value)):
                raise ConfigError(f"{origin}: train.init_from.{key}: expected a list of name patterns, got {value!r}")
        if self.distill is not None and "teacher" not in self.distill:
            raise ConfigError(f"{origin}: train.distill.teacher: required (a trained run directory)")
        if self.distill is not None and self.aux_heads is not None:
            raise ConfigError(f"{origin}: train.distill: cannot be combined with train.aux_heads")
        if self.distill is not None and self.loss is not None:
            raise ConfigError(f"{origin}: train.loss: not used with train.distill (its hard term is cross-entropy)")


def _number(value: Any, where: str) -> float:
    """An int or float; a string in scientific notation too (YAML 1.1 reads ``1e-3`` as a string)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value) if isinstance(value, float) else value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected a number, got {value!r}")


def _check_subsection(value: Any, name: str, allowed: tuple[str, ...], origin: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: train.{name}: expected a mapping of {', '.join(allowed)}, got {value!r}")
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{origin}: train.{name}.{key}: unknown key ({', '.join(allowed)})")
    if name == "init_from" and "path" not in value:
        raise ConfigError(f"{origin}: train.init_from.path: required (a run directory or a weights file)")
