"""A comparison grid: one base config, fusion blocks by pattern and ``--set-grid`` keys, crossed.

A cell is one point of the grid (a set of config overrides, named ``fusion=gmu,modality_dropout=0.3``);
each cell is trained once per seed, in ``OUT/cells/<cell>/seed-<k>/``. Swapping the fusion block
keeps the base section's keyword arguments the new block takes (``out_dim``; ``hidden_dims`` only
where accepted) and sets a role argument it needs (FiLM's ``target``) to the last modality in sorted
order, as :meth:`~fusionzoo.registry.Entry.fit` does. A cell whose model cannot be built (``bilinear``
with three modalities) is *skipped* with the builder's message.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fusionzoo.config import build_model, load_config
from fusionzoo.errors import ConfigError
from fusionzoo.registry import FUSIONS, accepted_kwargs

__all__ = ["Cell", "Replicate", "replicates", "expand_grid", "parse_seeds", "fusion_section"]

FUSION_KEY = "model.fusion.name"


@dataclass
class Cell:
    """One grid point: its name, the overrides that make its config, and why it is skipped (if)."""

    name: str
    overrides: tuple[str, ...]
    fusion: str | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    def run_dir(self, out: Path, replicate: Replicate | int) -> Path:
        return Path(out) / "cells" / self.name / as_replicate(replicate).path


@dataclass(frozen=True)
class Replicate:
    """One run of a cell: a seed, and with ``--folds K`` a fold of K-fold cross-validation. Every
    cell runs the same replicates, which pairs them in the leaderboard's tests."""

    seed: int
    fold: int | None = None
    folds: int | None = None

    @property
    def path(self) -> str:
        """Its folder under the cell: ``seed-S``, or ``fold-F/seed-S``."""
        return f"seed-{self.seed}" if self.fold is None else f"fold-{self.fold}/seed-{self.seed}"

    @property
    def overrides(self) -> list[str]:
        """What makes its config from the cell's: the seed, the fold (``data.folds``)."""
        return [f"seed={self.seed}"] + ([] if self.fold is None else [f"data.folds.k={self.folds}", f"data.folds.fold={self.fold}"])


def as_replicate(replicate: Replicate | int) -> Replicate:
    return replicate if isinstance(replicate, Replicate) else Replicate(int(replicate))


def replicates(seeds: Sequence[int], folds: int | None = None) -> list[Replicate]:
    """Every (fold, seed) of a grid, folds outermost; ``folds=None``: the seeds alone."""
    if folds is None:
        return [Replicate(s) for s in seeds]
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 3:
        raise ConfigError(f"--folds: at least 3 (one each for test and validation), got {folds!r}")
    return [Replicate(s, f, folds) for f in range(folds) for s in seeds]


def parse_seeds(text: str | Sequence[int] | int) -> list[int]:
    """``"0,1,2"``, ``"0-4"``, ``[0, 1]`` or ``3`` as a list of distinct ints."""
    if isinstance(text, bool):
        raise ConfigError(f"seeds: expected ints, got {text!r}")
    if isinstance(text, int):
        return [text]
    if isinstance(text, str):
        seeds: list[int] = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, sep, hi = part.partition("-")
            try:
                seeds += list(range(int(lo), int(hi) + 1)) if sep and lo else [int(part)]
            except ValueError:
                raise ConfigError(f"seeds: {part!r} is not an int or a range like 0-4") from None
    else:
        seeds = list(text)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: expected distinct ints, got {text!r}")
    return seeds


def fusion_section(base: Mapping[str, Any], name: str, modalities: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """The ``model.fusion`` section for block ``name`` from the base section, and notes on what was
    dropped or filled."""
    entry = FUSIONS.get(name)
    names, var_kw = accepted_kwargs(entry.fn)
    section, notes = {"name": name}, []
    for key, value in base.items():
        if key == "name" or key in entry.role_args and base.get("name") != name:
            continue
        if key in names or var_kw:
            section[key] = value
        else:
            notes.append(f"{key} dropped ({name} does not take it)")
    for arg in entry.role_args:
        if arg not in section:
            section[arg] = sorted(modalities)[-1]
            notes.append(f"{arg}={section[arg]}")
    return section, notes


def _grid_axes(fusions: Sequence[str], set_grid: Sequence[str]) -> list[tuple[str, list[Any]]]:
    axes: list[tuple[str, list[Any]]] = []
    if fusions:
        axes.append((FUSION_KEY, list(fusions)))
    for item in set_grid:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--set-grid {item!r}: expected KEY=V1,V2,... e.g. train.modality_dropout=0,0.3")
        if key in (k for k, _ in axes):
            raise ConfigError(f"--set-grid {key}: given twice")
        axes.append((key, [yaml.safe_load(v) for v in values.split(",")]))
    return axes


def _yaml(value: Any) -> str:
    """``value`` as one line of YAML, as ``--set KEY=VALUE`` reads it back."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _label(key: str, value: Any) -> str:
    short = "fusion" if key == FUSION_KEY else key.rsplit(".", 1)[-1]
    text = value if isinstance(value, str) else _yaml(value)
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", f"{short}={text}")


def expand_grid(config: str | Path | Mapping[str, Any], fusions: str | None = None, set_grid: Sequence[str] = (), overrides: Sequence[str] = ()) -> list[Cell]:
    """Every cell of the grid; ``fusions`` is a comma-separated list of fnmatch patterns over the
    fusion registry (``'*'``: all). Each cell's config is built once here, so an impossible cell is
    marked skipped before anything trains."""
    base = load_config(config, overrides)
    if base.kind != "model":
        raise ConfigError(f"{base.origin}: compare needs a classification config (a model: section)")
    names = sorted({n for pattern in fusions.split(",") if pattern.strip() for n in FUSIONS.list(pattern.strip())}) if fusions else []
    if fusions and not names:
        raise ConfigError(f"--fusions {fusions!r} matches no fusion block; see `fusionzoo list fusions`")
    axes = _grid_axes(names, set_grid)
    cells = []
    for values in itertools.product(*(v for _, v in axes)) if axes else [()]:
        point = dict(zip((k for k, _ in axes), values))
        cells.append(_cell(config, base.raw, point, list(overrides)))
    return cells


def _cell(config: Any, raw: Mapping[str, Any], point: Mapping[str, Any], overrides: list[str]) -> Cell:
    name = ",".join(_label(k, v) for k, v in point.items()) or "base"
    cell = Cell(name=name, overrides=())
    extra = [f"{k}={_yaml(v)}" for k, v in point.items() if k != FUSION_KEY]
    fusion = point.get(FUSION_KEY)
    if fusion is not None:
        cell.fusion = fusion
        section, cell.notes = fusion_section(raw["model"]["fusion"], fusion, raw["model"]["encoders"])
        extra.insert(0, f"model.fusion={_yaml(section)}")
    else:
        cell.fusion = raw["model"]["fusion"]["name"]
    cell.overrides = tuple(overrides + extra)
    try:
        build_model(load_config(config, cell.overrides))
    except (ConfigError, ValueError, TypeError, KeyError) as e:
        cell.skipped = str(e).splitlines()[0]
    return cell
