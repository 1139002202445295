"""YAML experiment configs: load, override, validate, build.

A config is plain data::

    name: concat_mlp_features
    seed: 0
    model:
      encoders:
        audio: {name: feature_mlp, in_dim: 40, out_dim: 32}
        visual: {name: feature_mlp, in_dim: 64, out_dim: 48}
      fusion: {name: concat_mlp, out_dim: 64, hidden_dims: [128]}
      head: {name: linear, out_dim: 10}

``name`` in a section is a registry key; every other key is passed to the constructor as written.
The builder fills the derived keys (a fusion block's ``in_dims`` from the encoders' ``out_dim``, the
head's ``in_dim`` from the fusion ``out_dim``, a generic encoder's ``modality`` from its key, a
dataset's ``split``, an optimizer's ``lr`` and ``weight_decay``); writing one by hand is an error.
Every error names its file and its path in the file.

:func:`load_config` returns an :class:`ExperimentConfig`: the sections as plain data, the ``train:``
section as typed :class:`~fusionzoo.settings.TrainSettings`, and the file it came from.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from fusionzoo.encoders.base import takes_raw
from fusionzoo.errors import ConfigError
from fusionzoo.extras import MissingExtraError
from fusionzoo.models.alignment import AlignmentModel
from fusionzoo.models.multimodal import MultimodalModel
from fusionzoo.registry import (
    DATASETS,
    ENCODERS,
    FUSIONS,
    HEADS,
    LOGGERS,
    LOSSES,
    OPTIMIZERS,
    Registry,
    accepted_kwargs,
    check_kwargs,
    closest,
)
from fusionzoo.settings import TrainSettings
from fusionzoo.tuning.space import check_tune_section

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "load_config",
    "apply_overrides",
    "build_model",
    "build_dataset",
    "raw_modalities",
    "build_loss",
    "build_from_section",
    "num_classes_of",
    "data_vocabularies",
    "check_model_fits_data",
    "check_input_sizes",
]

TOP_LEVEL_KEYS = ("name", "description", "seed", "model", "align", "data", "train", "tune")
MODEL_KEYS = ("encoders", "fusion", "head")
ALIGN_KEYS = ("encoders", "loss", "order")
SUPERVISED_TAGS = ("classification", "multilabel", "regression")  # train.loss; the data's task picks one


@dataclass(frozen=True)
class ExperimentConfig:
    """A loaded, validated experiment: ``model:`` (or ``align:``), ``data:`` and ``train:``.

    ``origin`` is the file it came from (``<dict>`` for a mapping); :meth:`error` makes a
    :class:`ConfigError` that names it and a key path. ``kind`` is ``"model"`` (a classifier),
    ``"align"`` (an embedding space) or ``None`` (neither section).
    """

    raw: Mapping[str, Any]
    origin: str
    train: TrainSettings

    @property
    def name(self) -> str:
        return self.raw.get("name") or Path(self.origin).stem

    @property
    def seeds(self) -> list[int]:
        """``seed: 3`` is one run; ``seed: [0, 1, 2]`` is one run per seed (``fusionzoo train``)."""
        seed = self.raw.get("seed", 0)
        return list(seed) if isinstance(seed, list) else [int(seed)]

    @property
    def seed(self) -> int:
        seeds = self.seeds
        if len(seeds) != 1:
            raise self.error("seed", f"{seeds} is one run per seed: train it with `fusionzoo train` or fusionzoo.compare.train_seeds")
        return seeds[0]

    @property
    def kind(self) -> str | None:
        return "align" if "align" in self.raw else "model" if "model" in self.raw else None

    @property
    def model(self) -> Mapping[str, Any] | None:
        return self.raw.get("model")

    @property
    def align(self) -> Mapping[str, Any] | None:
        return self.raw.get("align")

    @property
    def data(self) -> Mapping[str, Any] | None:
        return self.raw.get("data")

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {path}: {message}")

    def require(self, section: str, purpose: str) -> Mapping[str, Any]:
        if section not in self.raw:
            raise self.error(section, f"required {purpose}")
        return self.raw[section]

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what a run folder's ``config.yaml`` holds)."""
        return copy.deepcopy(dict(self.raw))


def load_config(source: str | Path | Mapping[str, Any] | ExperimentConfig, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML file (or copy a mapping), apply ``a.b=c`` overrides and validate it."""
    if isinstance(source, ExperimentConfig):
        overrides = list(overrides)
        if not overrides:
            return source
        cfg, origin = source.to_dict(), source.origin
    elif isinstance(source, Mapping):
        cfg, origin = copy.deepcopy(dict(source)), "<dict>"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        origin = str(path)
        try:
            with path.open() as f:
                cfg = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{origin}: not valid YAML: {_yaml_problem(e)}") from None
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            raise ConfigError(f"{origin}: the top level must be a mapping, got {type(cfg).__name__}")
    else:
        raise TypeError(f"load_config takes a path or a mapping, got {type(source).__name__}")
    cfg = apply_overrides(cfg, overrides, origin=origin)
    train = validate_config(cfg, origin=origin)
    return ExperimentConfig(raw=cfg, origin=origin, train=train)


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str], origin: str = "<dict>") -> dict[str, Any]:
    """Set ``a.b.c=value`` entries (value parsed as YAML: ``3`` is an int, ``[1, 2]`` a list)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{origin}: override {item!r} is not of the form a.b.c=value")
        node = cfg
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{origin}: override {item!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"{origin}: override {item!r}: the value is not valid YAML: {_yaml_problem(e)}") from None
    return cfg


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line: what PyYAML found and where (line and column, 1-based)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _unknown_key(path: str, key: str, allowed: Iterable[str], origin: str) -> ConfigError:
    hint = closest(key, sorted(allowed), n=1)
    suffix = f"; did you mean {hint[0]}?" if hint else f" (allowed: {', '.join(sorted(allowed))})"
    return ConfigError(f"{origin}: {path + '.' if path else ''}{key}: unknown key{suffix}")


def _mapping(value: Any, path: str, origin: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{origin}: {path}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _check_keys(section: Mapping[str, Any], allowed: tuple[str, ...], path: str, origin: str) -> None:
    for key in section:
        if key not in allowed:
            raise _unknown_key(path, key, allowed, origin)


def _check_section(
    registry: Registry, section: Any, path: str, derived: Iterable[str], origin: str, tag: str | tuple[str, ...] | None = None
) -> None:
    section = _mapping(section, path, origin)
    tags = (tag,) if isinstance(tag, str) else tag
    choices = registry.list() if tags is None else sorted({n for t in tags for n in registry.list(tag=t)})
    name = section.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{origin}: {path}.name: required, the {registry.kind} to build (one of {choices})")
    try:
        entry = registry.get(name)
    except KeyError as e:
        raise ConfigError(f"{origin}: {path}.name: {e.args[0]}") from None
    if tags is not None and not set(tags) & set(entry.tags):
        raise ConfigError(f"{origin}: {path}.name: {name!r} is not a {', '.join(tags[:-1]) + ' or ' if len(tags) > 1 else ''}{tags[-1]} {registry.kind} (choose one of {choices})")
    kwargs = {k: v for k, v in section.items() if k != "name"}
    taken, _ = accepted_kwargs(entry.fn)
    for key in derived:
        if key in kwargs and key in taken:
            raise ConfigError(f"{origin}: {path}.{key}: derived by the builder; remove it from the config")
    try:
        check_kwargs(entry.fn, kwargs, where=path)
    except TypeError as e:
        raise ConfigError(f"{origin}: {e}") from None


def _check_encoders(section: Any, path: str, origin: str) -> None:
    encoders = _mapping(section, path, origin)
    if not encoders:
        raise ConfigError(f"{origin}: {path}: give at least one modality")
    for m, sub in encoders.items():
        if not isinstance(m, str) or m in RESERVED_NAMES or m.endswith(RESERVED_SUFFIXES) or not m.isidentifier():
            raise ConfigError(
                f"{origin}: {path}.{m}: not a modality name: a batch keeps {', '.join(RESERVED_NAMES)} and <m>{', <m>'.join(RESERVED_SUFFIXES)} "
                "for itself; name modalities with identifiers such as audio, rgb, caption"
            )
        _check_section(ENCODERS, sub, f"{path}.{m}", ("modality",), origin)


#: Batch keys that are not modalities (``collate``, the feature cache, exported graph inputs).
RESERVED_NAMES = ("label", "present")
RESERVED_SUFFIXES = ("_lengths", "_features", "_features_mask")


def validate_config(cfg: Mapping[str, Any], origin: str = "<dict>") -> TrainSettings:
    """Check structure, registry names and constructor keys without building anything; returns the
    typed ``train:`` section."""
    _check_keys(cfg, TOP_LEVEL_KEYS, "", origin)
    seed = cfg.get("seed", 0)
    seeds = seed if isinstance(seed, list) else [seed]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{origin}: seed: expected an int or a list of distinct ints, got {seed!r}")
    if "align" in cfg and "model" in cfg:
        raise ConfigError(f"{origin}: align: a config trains either a model (model:) or an alignment (align:), not both")
    if "model" in cfg:
        model = _mapping(cfg["model"], "model", origin)
        _check_keys(model, MODEL_KEYS, "model", origin)
        for key in MODEL_KEYS:
            if key not in model:
                raise ConfigError(f"{origin}: model.{key}: required")
        _check_encoders(model["encoders"], "model.encoders", origin)
        _check_section(FUSIONS, model["fusion"], "model.fusion", ("in_dims",), origin)
        _check_section(HEADS, model["head"], "model.head", ("in_dim",), origin)
    if "align" in cfg:
        align = _mapping(cfg["align"], "align", origin)
        _check_keys(align, ALIGN_KEYS, "align", origin)
        _check_encoders(align.get("encoders", {}), "align.encoders", origin)
        if len(align["encoders"]) != 2:
            raise ConfigError(f"{origin}: align.encoders: name exactly two modalities, got {sorted(align['encoders'])}")
        if "loss" in align:
            _check_section(LOSSES, align["loss"], "align.loss", (), origin, tag="contrastive")
    if "data" in cfg:
        _check_section(DATASETS, cfg["data"], "data", ("split", "fitted", "raw"), origin)
    if "tune" in cfg:
        check_tune_section(cfg["tune"], origin)
    train = TrainSettings.from_dict(_mapping(cfg.get("train") or {}, "train", origin), origin)
    _check_section(OPTIMIZERS, train.optimizer, "train.optimizer", ("params", "lr", "weight_decay"), origin)
    if train.loss is not None:
        if "align" in cfg:
            raise ConfigError(f"{origin}: train.loss: an alignment names its loss in align.loss")
        _check_section(LOSSES, train.loss, "train.loss", (), origin, tag=SUPERVISED_TAGS)
    _check_loggers(train.loggers, origin)
    return train


def _check_loggers(entries: Any, origin: str) -> None:
    """``train.loggers``: a list of logger names or ``{name, options}`` mappings, each once."""
    if not isinstance(entries, list):
        raise ConfigError(f"{origin}: train.loggers: expected a list such as [tensorboard, mlflow], got {entries!r}")
    names = []
    for i, entry in enumerate(entries):
        section = {"name": entry} if isinstance(entry, str) else entry
        _check_section(LOGGERS, section, f"train.loggers[{i}]", (), origin)
        names.append(section["name"])
    if len(set(names)) != len(names):
        raise ConfigError(f"{origin}: train.loggers: each logger once, got {names}")


def build_from_section(registry: Registry, section: Mapping[str, Any], path: str, origin: str = "<dict>", **derived: Any) -> Any:
    """"Pop the name, look it up, call it with the rest" plus the derived keys it accepts."""
    kwargs = {k: v for k, v in section.items() if k != "name"}
    taken, var_kw = accepted_kwargs(registry.get(section["name"]).fn)
    kwargs.update({k: v for k, v in derived.items() if var_kw or k in taken})
    try:
        return registry.create(section["name"], **kwargs)
    except (TypeError, ValueError, MissingExtraError) as e:  # a missing extra too: one line naming the key and the extra
        raise ConfigError(f"{origin}: {path}: {e}") from e


def _build_encoders(cfg: ExperimentConfig, path: str, sections: Mapping[str, Any]) -> dict[str, nn.Module]:
    return {m: build_from_section(ENCODERS, s, f"{path}.{m}", cfg.origin, modality=m) for m, s in sorted(sections.items())}


def build_model(
    cfg: str | Path | Mapping[str, Any] | ExperimentConfig, encoder_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> MultimodalModel | AlignmentModel:
    """The model a config describes: a :class:`MultimodalModel` for ``model:``, an
    :class:`AlignmentModel` for ``align:``. ``encoder_overrides`` (modality -> arguments) update the
    encoder sections: a run folder's saved preprocessing (:mod:`fusionzoo.models.saved_encoders`);
    ``model.config`` stays the config's own section."""
    cfg = load_config(cfg)
    if cfg.kind is None:
        raise cfg.error("model", "required to build a model")
    section = cfg.align if cfg.kind == "align" else cfg.model
    sections = {m: {**s, **(encoder_overrides or {}).get(m, {})} for m, s in section["encoders"].items()}
    if cfg.kind == "align":
        encoders = _build_encoders(cfg, "align.encoders", sections)
        try:
            return AlignmentModel(encoders=encoders, order=cfg.align.get("order"))
        except ValueError as e:
            raise cfg.error("align.encoders", str(e)) from e
    encoders = _build_encoders(cfg, "model.encoders", sections)
    in_dims = {m: enc.out_dim for m, enc in encoders.items()}
    fusion = build_from_section(FUSIONS, cfg.model["fusion"], "model.fusion", cfg.origin, in_dims=in_dims)
    head = build_from_section(HEADS, cfg.model["head"], "model.head", cfg.origin, in_dim=fusion.out_dim)
    model = MultimodalModel(encoders=encoders, fusion=fusion, head=head)
    model.config = copy.deepcopy(dict(cfg.model))
    return model


def build_loss(cfg: ExperimentConfig, default: str = "cross_entropy") -> nn.Module:
    """The objective's loss: ``align.loss`` (default ``info_nce``) or ``train.loss`` (default
    ``default``, the task's: ``cross_entropy``, ``bce`` or ``mse``)."""
    if cfg.kind == "align":
        return build_from_section(LOSSES, cfg.align.get("loss", {"name": "info_nce"}), "align.loss", cfg.origin)
    return build_from_section(LOSSES, cfg.train.loss or {"name": default}, "train.loss", cfg.origin)


def build_dataset(cfg: ExperimentConfig, split: str, fitted: Mapping[str, Any] | None = None) -> Any:
    """The ``data:`` section built with the derived ``split``, for datasets that fit something on
    their training split (a vocabulary, a label list) the training split's ``fitted`` state, and
    ``raw``: the modalities whose encoder owns its preprocessing (a tokenizer), which the data gives
    as they are (strings) for the encoder's preprocessing to turn into model input."""
    section = cfg.require("data", "to train or evaluate")
    return build_from_section(DATASETS, section, "data", cfg.origin, split=split, fitted=fitted, raw=raw_modalities(cfg))


def raw_modalities(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The config's modalities whose encoder reads raw samples (``takes_raw``), sorted."""
    encoders = (cfg.align or {}).get("encoders") if cfg.kind == "align" else (cfg.model or {}).get("encoders")
    return tuple(sorted(m for m, s in (encoders or {}).items() if s.get("name") in ENCODERS and takes_raw(ENCODERS.get(s["name"]).fn)))


def num_classes_of(dataset: Any) -> int:
    """The number of outputs a head needs: classes (multi-class), labels (multi-label) or targets
    (regression, ``dataset.num_classes``)."""
    if hasattr(dataset, "num_classes"):
        return int(dataset.num_classes)
    if hasattr(dataset, "labels"):
        return int(max(dataset.labels)) + 1
    return int(max(int(dataset[i]["label"]) for i in range(len(dataset)))) + 1


def data_vocabularies(dataset: Any, modalities: Iterable[str]) -> dict[str, Any]:
    """The word vocabulary the data uses for each of ``modalities``: its own per modality
    (``dataset.vocabs``), else its one ``dataset.vocab``."""
    vocabs, vocab = getattr(dataset, "vocabs", None) or {}, getattr(dataset, "vocab", None)
    return {m: vocabs.get(m, vocab) for m in modalities if vocabs.get(m, vocab) is not None}


def check_input_sizes(cfg: ExperimentConfig, model: nn.Module, dataset: Any) -> None:
    """Clips shorter than their waveform encoder reads (``min_samples``) and images smaller than
    their image encoder reads (``min_size``) are refused, naming the rows, in every split before
    training starts (for a dataset that can tell: ``shorter_than``, ``smaller_than``)."""
    section = "align" if cfg.kind == "align" else "model"
    for m, enc in model.encoders.items():
        if m not in getattr(dataset, "specs", {}):
            continue
        samples = getattr(enc, "min_samples", None) if getattr(enc, "input", "waveform") == "waveform" else None
        pixels = getattr(enc, "min_size", None)
        if samples is not None and hasattr(dataset, "shorter_than"):
            found, what, unit = dataset.shorter_than(m, samples), f"clips of at least {samples} samples", "samples"
        elif pixels is not None and hasattr(dataset, "smaller_than"):
            found, what, unit = dataset.smaller_than(m, pixels), f"images of at least {pixels}x{pixels} pixels", "pixels"
        else:
            continue
        if found:
            row = getattr(getattr(dataset, "source", None), "unit", "line")  # a file's line, a table's row
            rows = ", ".join(f"{row} {line!r} ({n} {unit})" if isinstance(line, str) else f"{row} {line} ({n} {unit})" for line, n in found[:3])
            rows += f" and {len(found) - 3} more" if len(found) > 3 else ""
            raise cfg.error(
                f"{section}.encoders.{m}",
                f"{type(enc).__name__} reads {what}; {len(found)} {'are' if len(found) > 1 else 'is'} smaller in "
                f"{getattr(dataset, 'origin', None) or getattr(dataset, 'path', 'the data')}: {rows}. Give larger inputs (size, max_seconds), a smaller network, or drop those rows",
            )


def check_model_fits_data(cfg: ExperimentConfig, model: nn.Module, dataset: Any) -> int:
    """The data's number of classes, after checking the encoders' modalities (when the dataset
    declares ``modalities``), the head, the text vocabularies and the input standardisation (an
    encoder that standardises its input may not read data that is standardised already) against it."""
    classes = num_classes_of(dataset)
    if isinstance(model, MultimodalModel) and model.out_dim != classes:
        task = getattr(dataset, "task", "multiclass")
        what = {"regression": "regression targets", "multilabel": "labels"}.get(task, "classes")
        raise cfg.error("model.head.out_dim", f"the data has {classes} {what} ({task}), the head outputs {model.out_dim}")
    vocabs = data_vocabularies(dataset, model.encoders)
    section = "align" if cfg.kind == "align" else "model"
    available = getattr(dataset, "modalities", None)
    unknown = [m for m in model.encoders if available is not None and m not in available]
    if unknown:
        raise cfg.error(
            f"{section}.encoders.{unknown[0]}",
            f"the data has no modality {unknown[0]!r}: it has {sorted(available)}, the config's encoders read {sorted(model.encoders)}",
        )
    standardized = set(getattr(dataset, "standardized", ()))
    rates = getattr(dataset, "sample_rates", {})
    for m, enc in model.encoders.items():
        rate = getattr(enc, "sample_rate", None)
        if rate is not None and m in rates and rates[m] != rate:
            raise cfg.error(
                f"{section}.encoders.{m}.sample_rate",
                f"{rate} Hz, but the data gives {m!r} at {rates[m]} Hz: the encoder would read it at the wrong rate "
                f"(its filterbank, or a pretrained model's resampling); make the two equal",
            )
        if getattr(enc, "normalizes_input", False) and m in standardized:
            raise cfg.error(
                f"{section}.encoders.{m}",
                f"{type(enc).__name__} standardises its input with its weights' mean and std, and the data already "
                f"standardises {m!r}: turn one off (the data's normalize, or the encoder's normalize: false)",
            )
        size, words = getattr(enc, "vocab_size", None), vocabs.get(m)
        if words is not None and size is not None and size < len(words):
            raise cfg.error(f"{section}.encoders.{m}.vocab_size", f"{size} is smaller than the data's vocabulary ({len(words)})")
    return classes
