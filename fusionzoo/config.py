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
head's ``in_dim`` from the fusion ``out_dim``, a generic encoder's ``modality`` from its key);
writing one by hand is an error. Every error names its path in the file.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fusionzoo.registry import (
    DATASETS,
    ENCODERS,
    FUSIONS,
    HEADS,
    LOSSES,
    Registry,
    accepted_kwargs,
    check_kwargs,
    closest,
)

__all__ = ["ConfigError", "load_config", "apply_overrides", "validate_config", "build_model", "build_from_section"]

TOP_LEVEL_KEYS = ("name", "description", "seed", "model", "align", "data", "train")
MODEL_KEYS = ("encoders", "fusion", "head")


class ConfigError(ValueError):
    """A config that cannot be built; the message starts with the file and the key's path."""


def load_config(source: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML file (or copy a dict), apply ``a.b=c`` overrides and validate it."""
    if isinstance(source, Mapping):
        cfg, origin = copy.deepcopy(dict(source)), "<dict>"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        with path.open() as f:
            cfg = yaml.safe_load(f)
        origin = str(path)
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            raise ConfigError(f"{origin}: the top level must be a mapping, got {type(cfg).__name__}")
    else:
        raise TypeError(f"load_config takes a path or a mapping, got {type(source).__name__}")
    cfg = apply_overrides(cfg, overrides, origin=origin)
    validate_config(cfg, origin=origin)
    cfg["_origin"] = origin
    return cfg


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
        node[parts[-1]] = yaml.safe_load(raw)
    return cfg


def _unknown_key(path: str, key: str, allowed: Iterable[str]) -> ConfigError:
    hint = closest(key, sorted(allowed), n=1)
    suffix = f"; did you mean {hint[0]}?" if hint else f" (allowed: {', '.join(sorted(allowed))})"
    return ConfigError(f"{path}.{key}: unknown key{suffix}" if path else f"{key}: unknown key{suffix}")


def _mapping(value: Any, path: str, origin: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{origin}: {path}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _check_section(registry: Registry, section: Any, path: str, derived: Iterable[str], origin: str) -> None:
    section = _mapping(section, path, origin)
    name = section.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{origin}: {path}.name: required, the {registry.kind} to build (one of {registry.list()})")
    try:
        entry = registry.get(name)
    except KeyError as e:
        raise ConfigError(f"{origin}: {path}.name: {e.args[0]}") from None
    kwargs = {k: v for k, v in section.items() if k != "name"}
    taken, _ = accepted_kwargs(entry.fn)
    for key in derived:
        if key in kwargs and key in taken:
            raise ConfigError(f"{origin}: {path}.{key}: derived by the builder; remove it from the config")
    try:
        check_kwargs(entry.fn, kwargs, where=path)
    except TypeError as e:
        raise ConfigError(f"{origin}: {e}") from None


def validate_config(cfg: Mapping[str, Any], origin: str = "<dict>") -> None:
    """Check structure, registry names and constructor keys without building anything."""
    for key in cfg:
        if key not in TOP_LEVEL_KEYS and key != "_origin":
            raise ConfigError(f"{origin}: {_unknown_key('', key, TOP_LEVEL_KEYS).args[0]}")
    if "seed" in cfg and (isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int)):
        raise ConfigError(f"{origin}: seed: expected an int, got {cfg['seed']!r}")
    if "align" in cfg and "model" in cfg:
        raise ConfigError(f"{origin}: align: a config trains either a model (model:) or an alignment (align:), not both")
    if "model" in cfg:
        model = _mapping(cfg["model"], "model", origin)
        for key in model:
            if key not in MODEL_KEYS:
                raise ConfigError(f"{origin}: {_unknown_key('model', key, MODEL_KEYS).args[0]}")
        for key in MODEL_KEYS:
            if key not in model:
                raise ConfigError(f"{origin}: model.{key}: required")
        encoders = _mapping(model["encoders"], "model.encoders", origin)
        if not encoders:
            raise ConfigError(f"{origin}: model.encoders: give at least one modality")
        for m, section in encoders.items():
            _check_section(ENCODERS, section, f"model.encoders.{m}", ("modality",), origin)
        _check_section(FUSIONS, model["fusion"], "model.fusion", ("in_dims",), origin)
        _check_section(HEADS, model["head"], "model.head", ("in_dim",), origin)
    if "align" in cfg:
        align = _mapping(cfg["align"], "align", origin)
        for key in align:
            if key not in ("encoders", "loss", "order"):
                raise ConfigError(f"{origin}: {_unknown_key('align', key, ('encoders', 'loss', 'order')).args[0]}")
        for m, section in _mapping(align.get("encoders", {}), "align.encoders", origin).items():
            _check_section(ENCODERS, section, f"align.encoders.{m}", ("modality",), origin)
        if "loss" in align:
            _check_section(LOSSES, align["loss"], "align.loss", (), origin)
    if "data" in cfg:
        _check_section(DATASETS, cfg["data"], "data", ("split",), origin)
    if "train" in cfg:
        from fusionzoo.training.settings import TrainSettings

        TrainSettings.from_dict(_mapping(cfg["train"], "train", origin), origin)


def build_from_section(registry: Registry, section: Mapping[str, Any], path: str, origin: str = "<dict>", **derived: Any) -> Any:
    """"Pop the name, look it up, call it with the rest" plus the derived keys it accepts."""
    kwargs = {k: v for k, v in section.items() if k != "name"}
    taken, var_kw = accepted_kwargs(registry.get(section["name"]).fn)
    kwargs.update({k: v for k, v in derived.items() if var_kw or k in taken})
    try:
        return registry.create(section["name"], **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{origin}: {path}: {e}") from e


def build_model(cfg: str | Path | Mapping[str, Any]):  # -> MultimodalModel (imported lazily: no cycle)
    """Build a :class:`~fusionzoo.models.MultimodalModel` from a config path or dict."""
    from fusionzoo.models.multimodal import MultimodalModel

    if not isinstance(cfg, Mapping) or "_origin" not in cfg:
        cfg = load_config(cfg)
    origin = cfg.get("_origin", "<dict>")
    if "model" not in cfg:
        raise ConfigError(f"{origin}: model: required to build a model")
    model_cfg = cfg["model"]
    encoders = {
        m: build_from_section(ENCODERS, section, f"model.encoders.{m}", origin, modality=m)
        for m, section in sorted(model_cfg["encoders"].items())
    }
    in_dims = {m: enc.out_dim for m, enc in encoders.items()}
    fusion = build_from_section(FUSIONS, model_cfg["fusion"], "model.fusion", origin, in_dims=in_dims)
    head = build_from_section(HEADS, model_cfg["head"], "model.head", origin, in_dim=fusion.out_dim)
    return MultimodalModel(encoders=encoders, fusion=fusion, head=head)
