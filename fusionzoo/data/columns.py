"""The column specification: how one row of a table (or one sample of a shard) becomes a sample.

A row is a mapping of column name to cell. :class:`Columns` holds ``data.modalities`` (a column and
a ``kind`` per modality, with the kind's options) and ``data.label``, and turns a row into a
sample in three steps, whichever source the rows come from (a manifest table, a Parquet file, a
DataFrame, a Hugging Face dataset, WebDataset shards):

1. :meth:`Columns.read_row`: the raw label and every cell read (a path or the bytes of a file,
   a text, a feature vector; an empty cell is a missing modality), each problem a
   :class:`RowError` naming the column;
2. :meth:`Columns.finish`: with the training split's fitted state (:meth:`Columns.fit`,
   :meth:`Columns.use`: the label list, word vocabularies, feature widths), labels become
   indices or targets, texts ids, and feature widths are checked;
3. :meth:`Columns.sample`: images and audio decoded and transformed (augmented in training).

Where a problem is (a file's line, a table's row, a shard's sample) is the source's to say.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fusionzoo.data.decode import AudioReader, CellError, ImageReader, read_features
from fusionzoo.vocab import Vocab

__all__ = ["Columns", "ColumnAttributes", "Record", "RowError", "empty", "KINDS", "TASK_NAMES"]

KINDS = ("image", "audio", "text", "features")
TASK_NAMES = ("multiclass", "multilabel", "regression")
TEXT_OPTIONS = ("min_freq", "max_size", "lower", "max_tokens")
FEATURE_OPTIONS = ("dim", "key")
LABEL_KEYS = ("column", "task", "separator", "classes", "allow_unlabelled")
FORMAT = 1


class RowError(Exception):
    """A cell of ``column`` that cannot be used; the source says which row."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


def empty(value: Any) -> bool:
    """A missing cell: None, blank text, no bytes."""
    return value is None or (isinstance(value, str) and not value.strip()) or value == b""


@dataclass
class Modality:
    name: str
    column: str
    kind: str
    options: dict
    reader: ImageReader | AudioReader | None = None


@dataclass
class Record:
    """One row read: where it is (``line``: a number or a name), its label and each modality's value
    (None: missing); once finished, ``given`` keeps the label as the row wrote it."""

    line: Any
    label: Any
    values: dict[str, Any] = field(default_factory=dict)
    given: Any = None


def _check_text_options(options: Mapping[str, Any], where: str) -> None:
    """The word-vocabulary options of a text column: counts are ints >= 1 (``max_size``, ``max_tokens``
    may be null: no limit), ``lower`` a bool."""
    for key, least, nullable in (("min_freq", 1, False), ("max_size", 1, True), ("max_tokens", 1, True)):
        if key not in options or options[key] is None and nullable:
            continue
        value = options[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{where}.{key}: an int >= {least}{' or null' if nullable else ''}, got {value!r}")
    if not isinstance(options.get("lower", True), bool):
        raise ValueError(f"{where}.lower: true or false, got {options['lower']!r}")


def _modality(m: str, spec: Any) -> Modality:
    where = f"modalities.{m}"
    if not isinstance(spec, Mapping) or "column" not in spec or "kind" not in spec:
        raise ValueError(f"{where}: needs column and kind (one of {KINDS}), got {spec!r}")
    kind, options = spec["kind"], {k: v for k, v in spec.items() if k not in ("column", "kind")}
    allowed = {"image": ImageReader.OPTIONS, "audio": AudioReader.OPTIONS, "text": TEXT_OPTIONS, "features": FEATURE_OPTIONS}.get(kind)
    if allowed is None:
        raise ValueError(f"{where}.kind: one of {KINDS}, got {kind!r}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown option for kind {kind} (allowed: {', '.join(allowed)})")
    reader: Any = None
    if kind == "text":
        _check_text_options(options, where)
    elif kind == "image":
        reader = ImageReader(**options, where=where)
    elif kind == "audio":
        if "sample_rate" not in options:
            raise ValueError(f"{where}.sample_rate: required for audio (the rate the encoder expects)")
        reader = AudioReader(**options, where=where)
    return Modality(m, str(spec["column"]), kind, options, reader)


class Columns:
    """``data.modalities`` and ``data.label`` (see :mod:`fusionzoo.data.manifest` for the options),
    with the training split's fitted state once :meth:`use` has it. ``raw``: the modalities whose
    encoder preprocesses them (their text stays a string, no vocabulary is fitted)."""

    def __init__(self, modalities: Mapping[str, Mapping[str, Any]], label: Mapping[str, Any], raw: Iterable[str] = ()) -> None:
        if not isinstance(modalities, Mapping) or not modalities:
            raise ValueError("modalities: a mapping {modality: {column, kind, ...}} with at least one entry")
        self.specs = {m: _modality(m, spec) for m, spec in modalities.items()}
        self.raw = tuple(m for m in raw if m in self.specs)
        for m in self.raw:
            word_options = sorted(set(self.specs[m].options) & set(TEXT_OPTIONS))
            if word_options:
                raise ValueError(
                    f"modalities.{m}.{word_options[0]}: a word-vocabulary option, but the model's {m} encoder tokenizes "
                    "the text itself (its tokenizer's max_length and truncation say how long a text may be)"
                )
        self._label(label)
        self.fitted: dict[str, Any] | None = None

    def _label(self, label: Mapping[str, Any]) -> None:
        if not isinstance(label, Mapping) or "column" not in label:
            raise ValueError(f"label: needs column (and task, one of {TASK_NAMES}), got {label!r}")
        unknown = sorted(set(label) - set(LABEL_KEYS))
        if unknown:
            raise ValueError(f"label.{unknown[0]}: unknown key (allowed: {', '.join(LABEL_KEYS)})")
        self.label_column, self.task = str(label["column"]), label.get("task", "multiclass")
        if self.task not in TASK_NAMES:
            raise ValueError(f"label.task: one of {TASK_NAMES}, got {self.task!r}")
        self.separator = label.get("separator", ";")
        self.allow_unlabelled = bool(label.get("allow_unlabelled", False))
        classes = label.get("classes")
        if classes is not None and (self.task == "regression" or not isinstance(classes, list) or len(set(map(str, classes))) != len(classes) or not classes):
            raise ValueError(f"label.classes: a list of distinct class names for a classification task, got {classes!r}")
        self.fixed_classes = None if classes is None else [str(c) for c in classes]

    @property
    def columns(self) -> list[tuple[str, str]]:
        """``(where in the config, column)`` of every column the specification reads."""
        return [(f"modalities.{m}.column", s.column) for m, s in self.specs.items()] + [("label.column", self.label_column)]

    # -- reading a row ---------------------------------------------------------------------------

    def read_row(self, line: Any, row: Mapping[str, Any], root: Path, check: bool = True) -> Record:
        """The row's raw label and cells (``check``: each image and audio file's header read)."""
        record = Record(line, self.raw_label(row.get(self.label_column)))
        for m, spec in self.specs.items():
            cell = row.get(spec.column)
            try:
                record.values[m] = None if empty(cell) else self.read_cell(spec, cell, root, check)
            except CellError as e:
                raise RowError(spec.column, str(e)) from None
        return record

    def read_cell(self, spec: Modality, cell: Any, root: Path, check: bool = True) -> Any:
        if spec.kind == "text":
            if isinstance(cell, bytes):  # a shard's .txt member
                try:
                    cell = cell.decode()
                except UnicodeDecodeError:
                    raise CellError(f"expected UTF-8 text, got bytes {cell[:16]!r}...") from None
            if not isinstance(cell, str):
                raise CellError(f"expected text, got {type(cell).__name__} {cell!r}")
            return cell
        if spec.kind == "features":
            return read_features(cell, root, spec.options.get("key"))
        source = self._file_cell(cell, root)
        if check:
            spec.reader.check(source)
        return source

    @staticmethod
    def _file_cell(cell: Any, root: Path) -> Path | bytes:
        """An image or audio cell: a path under ``root``, the encoded file's bytes, or a Hugging
        Face ``{bytes, path}`` struct (its bytes when it has them, else its path)."""
        if isinstance(cell, dict) and set(cell) <= {"bytes", "path", "sampling_rate", "array"}:
            if cell.get("bytes"):
                return bytes(cell["bytes"])
            cell = cell.get("path")
        if isinstance(cell, bytes):
            return cell
        if not isinstance(cell, str) or not cell.strip():
            raise CellError(f"expected a file path or the bytes of a file, got {type(cell).__name__} {str(cell)[:80]!r}")
        return root / cell.strip()

    def raw_label(self, cell: Any) -> Any:
        """The label as the row writes it: a name, a sorted list of names, a number or None."""
        column = self.label_column
        if isinstance(cell, bytes):  # a shard's .cls / .txt member
            cell = cell.decode(errors="replace")
        if isinstance(cell, bool) or isinstance(cell, list) and any(isinstance(n, (bool, dict, list)) for n in cell):
            raise RowError(column, f"a label is a name or a number, got {json.dumps(cell)} (quote it to mean the word)")
        if self.task == "multilabel":
            if empty(cell):
                return []
            if isinstance(cell, str) and cell.strip().startswith("["):  # a JSON list written into a CSV cell
                try:
                    cell = json.loads(cell)
                except json.JSONDecodeError:
                    raise RowError(column, f"{cell!r} starts like a JSON list but is not one") from None
            names = cell if isinstance(cell, list) else str(cell).split(self.separator)
            return sorted({str(n).strip() for n in names if str(n).strip()})
        if empty(cell):
            if not self.allow_unlabelled:
                raise RowError(column, "no label (label.allow_unlabelled: true accepts unlabelled rows)")
            return None
        if self.task == "regression":
            try:
                value = float(cell)
            except (TypeError, ValueError):
                raise RowError(column, f"regression target {cell!r} is not a number") from None
            if not math.isfinite(value):
                raise RowError(column, f"regression target {cell!r} is not finite")
            return value
        return str(cell).strip()

    # -- fitting on the training split -----------------------------------------------------------

    def fit(self, records: list[Record], origin: str) -> dict[str, Any]:
        """Label list, vocabularies and feature widths from the (kept) training rows."""
        fitted: dict[str, Any] = {"format": FORMAT, "task": self.task, "classes": None, "vocabs": {}, "feature_dims": {}}
        if self.task != "regression":
            if self.fixed_classes is not None:
                fitted["classes"] = self.fixed_classes
            else:
                seen = {c for r in records for c in (r.label if self.task == "multilabel" else [r.label]) if c is not None}
                _check_spellings(seen, origin)
                fitted["classes"] = sorted(seen, key=_natural)
                if not fitted["classes"]:
                    raise ValueError(f"{origin}: the training split has no labels")
        for m, spec in self.specs.items():
            present = [r.values[m] for r in records if r.values[m] is not None]
            if spec.kind == "text" and m not in self.raw:
                o = spec.options
                vocab = Vocab.build(present, min_freq=o.get("min_freq", 1), max_size=o.get("max_size"), lower=o.get("lower", True))
                fitted["vocabs"][m] = {"lower": vocab.lower, "itos": vocab.itos}
            elif spec.kind == "features":
                dim = spec.options.get("dim", present[0].numel() if present else None)
                if dim is None:
                    raise ValueError(f"modalities.{m}: no training row has features; give dim")
                fitted["feature_dims"][m] = int(dim)
        return fitted

    def use(self, fitted: Mapping[str, Any]) -> None:
        """Take the training split's fitted state (checked against this specification)."""
        if fitted.get("task") != self.task:
            raise ValueError(f"label.task: {self.task!r}, but the training split's saved state says {fitted.get('task')!r}")
        self.fitted = copy.deepcopy(dict(fitted))
        self.classes = fitted["classes"]
        self.class_index = {c: i for i, c in enumerate(self.classes or [])}
        self.num_classes = 1 if self.task == "regression" else len(self.classes)
        self.vocabs = {m: Vocab(v["itos"], lower=v["lower"]) for m, v in fitted["vocabs"].items() if m not in self.raw}
        self.feature_dims = dict(fitted["feature_dims"])
        for m, spec in self.specs.items():
            if spec.kind == "text" and m not in self.vocabs and m not in self.raw or spec.kind == "features" and m not in self.feature_dims:
                raise ValueError(f"modalities.{m}: the training split's saved state has nothing for it")

    def finish(self, record: Record) -> Record:
        """Labels to indices, texts to ids, feature widths checked (in place; :meth:`use` first)."""
        record.given, record.label = record.label, self._label_value(record.label)
        for m, spec in self.specs.items():
            value = record.values[m]
            if value is None:
                continue
            if spec.kind == "text" and m not in self.raw:
                ids = self.vocabs[m].ids(value)
                if spec.options.get("max_tokens") is not None:
                    ids = ids[: int(spec.options["max_tokens"])]
                record.values[m] = torch.tensor(ids, dtype=torch.long)
            elif spec.kind == "features" and value.numel() != self.feature_dims[m]:
                raise RowError(spec.column, f"{value.numel()} features, expected {self.feature_dims[m]} (the training split's width)")
        return record

    def _label_value(self, raw: Any) -> Any:
        column = self.label_column
        if self.task == "regression":
            return float("nan") if raw is None else raw
        if self.task == "multiclass":
            if raw is None:
                return -1
            if raw not in self.class_index:
                raise RowError(column, f"label {raw!r} is not in the label list {self.classes} (from the training split)")
            return self.class_index[raw]
        target = torch.zeros(len(self.classes))
        for name in raw:
            if name not in self.class_index:
                raise RowError(column, f"label {name!r} is not in the label list {self.classes} (from the training split)")
            target[self.class_index[name]] = 1.0
        return target

    # -- the sample ------------------------------------------------------------------------------

    def sample(self, record: Record, train: bool, decode: Callable[[Modality, Any], torch.Tensor] | None = None, skip: Iterable[str] = ()) -> dict:
        """``{modality: value, "label": ...}`` of a finished record; images and audio decoded (by
        ``decode(spec, source)``, default the modality's reader) and transformed. Modalities in
        ``skip`` and missing ones are left out. A file that cannot be decoded is a :class:`RowError`."""
        sample: dict[str, Any] = {"label": record.label}
        for m, spec in self.specs.items():
            value = record.values[m]
            if value is None or m in skip:
                continue
            if spec.reader is None:
                sample[m] = value
                continue
            try:
                decoded = decode(spec, value) if decode is not None else spec.reader.decode(value)
            except CellError as e:
                raise RowError(spec.column, str(e)) from None
            sample[m] = spec.reader.transform(decoded, train)
        return sample


class ColumnAttributes:
    """What a dataset read through :class:`Columns` (its ``columns``) of one ``split`` tells the
    model builder: modalities, task, classes, vocabularies, sample rates, input standardisation,
    augmentation."""

    columns: Columns
    split: str

    specs = property(lambda self: self.columns.specs)
    raw = property(lambda self: self.columns.raw)
    task = property(lambda self: self.columns.task)
    label_column = property(lambda self: self.columns.label_column)
    fitted = property(lambda self: self.columns.fitted)
    classes = property(lambda self: self.columns.classes)
    class_index = property(lambda self: self.columns.class_index)
    num_classes = property(lambda self: self.columns.num_classes)
    vocabs = property(lambda self: self.columns.vocabs)
    feature_dims = property(lambda self: self.columns.feature_dims)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted(self.columns.specs))

    @property
    def vocab(self) -> Vocab | None:
        """The one word vocabulary, when there is exactly one."""
        vocabs = self.columns.vocabs
        return next(iter(vocabs.values())) if len(vocabs) == 1 else None

    @property
    def standardized(self) -> tuple[str, ...]:
        return tuple(m for m, s in self.columns.specs.items() if s.kind == "image" and s.reader.normalized)

    @property
    def augmented(self) -> tuple[str, ...]:
        """Modalities whose training samples are augmented at random (different at every read)."""
        return tuple(m for m, s in self.columns.specs.items() if s.options.get("augment")) if self.split == "train" else ()

    @property
    def sample_rates(self) -> dict[str, int]:
        """The rate each audio modality's waveforms come at (checked against its encoder's)."""
        return {m: s.options["sample_rate"] for m, s in self.columns.specs.items() if s.kind == "audio"}


def _check_spellings(names: set[str], path: str) -> None:
    """Two label names that are one number spelled twice (``0`` and ``0.0``, ``01`` and ``1``) are
    refused: as names they would be two classes."""
    by_value: dict[float, str] = {}
    for name in sorted(names):
        try:
            value = float(name)
        except ValueError:
            continue
        if value in by_value:
            raise ValueError(f"{path}: the labels {by_value[value]!r} and {name!r} are one number spelled twice, and would be two "
                             "classes; write every label the same way (or list them in label.classes)")
        by_value[value] = name


def _natural(name: str) -> tuple:
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)
