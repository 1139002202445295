"""``manifest``: your own data, one row per sample in a table, any mix of modalities.

The table is a CSV or JSONL file, a Parquet file or folder, a pandas DataFrame or a Hugging Face
dataset (:mod:`fusionzoo.data.sources`; ``hf_dataset``, :mod:`fusionzoo.data.hf`, loads one by name
or folder): the column specification below (:mod:`fusionzoo.data.columns`) is the same for all of
them, and for the streamed sources (``webdataset``, ``hf_dataset`` with ``streaming: true``).

A config names a column per modality and how to read it::

    data:
      name: manifest
      path: data/items.csv                # CSV with a header row, or .jsonl (one object per line)
      root: data/                         # relative file paths resolve here (default: the file's folder)
      modalities:
        visual: {column: image, kind: image, size: [224, 224], augment: {crop: {scale: [0.5, 1]}, flip: 0.5}}
        audio:  {column: audio, kind: audio, sample_rate: 16000, max_seconds: 5}
        text:   {column: caption, kind: text, min_freq: 2}
        extra:  {column: feats, kind: features}            # .npy / .safetensors path, or numbers
      label: {column: label, task: multiclass}               # multiclass | multilabel | regression
      splits: {column: split}                                # or {val: 0.1, test: 0.1, seed: 0}
      on_error: raise                                        # or skip: bad rows left out and reported

(``splits``, not ``split``: the builder derives ``split``, the one this dataset object serves.)

* **Missing modalities.** An empty cell (or ``null`` in JSONL) means the sample lacks that modality:
  the sample leaves it out, and :func:`~fusionzoo.data.collate.collate` marks it absent in
  ``batch["present"]``, which every fusion block honours. A row needs a label, not every modality.
* **Fitted on the training split.** A ``text`` column's vocabulary (``min_freq``, ``max_size``,
  ``lower``; ``max_tokens`` cuts longer texts, explicitly), the label list (``label.classes`` fixes
  it; otherwise the training split's labels, sorted, numerically when they are all numbers) and each
  ``features`` column's width (``dim`` fixes it; otherwise the first training row's) are fitted on
  the ``train`` split only and held in :attr:`fitted`; the training loop passes that to ``val`` and
  ``test`` and saves it in the run folder (``data_state.json``), so evaluation and ``--resume`` use
  the same ids.
* **Raw text for encoders that tokenize.** A model whose encoder owns its preprocessing (``hf_text``,
  ``open_clip``: a tokenizer) gets the column's strings as they are: the builder derives ``raw``
  (those modalities) from the model config, no vocabulary is fitted for them, and the encoder's
  preprocessing runs in the data workers at collation. Images and audio are the same either way
  (decoded tensors at the column's ``size`` if given, else their own; waveforms at ``sample_rate``).
* **Tasks.** ``multiclass`` (one label per row), ``multilabel`` (labels joined by ``separator``,
  default ``;``, or a JSON list; an empty cell is the empty set) and ``regression`` (a number; the
  head has one output). ``allow_unlabelled: true`` accepts empty label cells (ignored by the loss).
* **Splits.** ``{column: NAME}`` reads ``train``/``val``/``test`` from a column (the default when the
  file has a ``split`` column); ``{val: 0.1, test: 0.1, seed: 0}`` draws them, stratified by label
  for ``multiclass``. ``folds: {k: 5, fold: 0, group: speaker, seed: 0}`` (instead of ``splits``)
  gives fold 0 of grouped k-fold cross-validation (:mod:`fusionzoo.data.folds`): a ``group``
  value never spans two folds; rows without one are dealt stratified by label.
* **Bad rows.** Every problem found names the file, the line and the column: a missing or
  undecodable file, a wrong sample rate with ``resample: false``, a label not in the label list, a
  feature width that differs, a non-number. At start every row of the split is checked (files exist,
  image signatures, audio headers; features and text are read in full); ``check: decode`` decodes
  every image and recording too. ``on_error: skip`` leaves bad rows out instead and lists them in
  :attr:`skipped` (written to the run folder's ``data_report.json``); nothing is dropped silently.
* **Scale.** Images and audio are decoded in ``__getitem__``, that is in the ``DataLoader`` workers
  (``train.num_workers``); ``cache: memory`` decodes every file once at start and keeps it (small
  sets), ``cache: disk`` keeps each decoded file in ``cache_dir`` (default ``.fusionzoo-cache``
  beside the manifest) for the next epoch and the next run (:class:`~fusionzoo.data.decode.DiskCache`).
  Augmentation still runs per sample.

How each kind is read and transformed: :mod:`fusionzoo.data.decode`.
"""

from __future__ import annotations

import io
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fusionzoo.data.columns import KINDS, TASK_NAMES, ColumnAttributes, Columns, Record, RowError, empty
from fusionzoo.data.decode import CellError, DiskCache
from fusionzoo.data.folds import assign_folds, check_folds, fold_splits
from fusionzoo.data.image_header import image_size
from fusionzoo.data.sources import is_table, read_manifest, read_source
from fusionzoo.registry import DATASETS

__all__ = ["ManifestDataset", "from_dataframe", "read_manifest", "draw_splits", "SPLITS", "KINDS", "TASK_NAMES"]

SPLITS = ("train", "val", "test")


@DATASETS.register("manifest", tags=("user", "real"))
class ManifestDataset(ColumnAttributes, Dataset):
    """Samples from a CSV or JSONL manifest (see the module docstring).

    Samples: ``{modality: image float [c, h, w] | audio float [t] | text long [l] (str when raw) | features float [d],
    "label": int | float | float [k]}``; a modality whose cell is empty is left out.
    """

    def __init__(
        self,
        *,
        path: Any,
        modalities: Mapping[str, Mapping[str, Any]],
        label: Mapping[str, Any],
        splits: Mapping[str, Any] | None = None,
        folds: Mapping[str, Any] | None = None,
        root: str | Path | None = None,
        on_error: str = "raise",
        cache: str = "none",
        cache_dir: str | Path | None = None,
        check: str = "header",
        split: str = "train",
        fitted: Mapping[str, Any] | None = None,
        raw: tuple[str, ...] | list[str] = (),
    ) -> None:
        self._check_options(split, on_error, cache, cache_dir, check, splits, folds)
        self.folds = None if folds is None else check_folds(folds, "folds", group=True)
        self._args = {"path": path, "modalities": modalities, "label": label, "splits": splits, "folds": folds, "root": root, "on_error": on_error, "cache": cache, "cache_dir": cache_dir, "check": check, "raw": raw}
        self.path = None if is_table(path) else Path(path)  # (a DataFrame or a Hugging Face dataset: no file)
        home = self.path.parent if self.path is not None and not self.path.is_dir() else self.path if self.path is not None else Path(".")
        self.root = Path(root) if root is not None else home
        self.split, self.on_error, self.cache = split, on_error, cache
        self._disk = DiskCache(cache_dir if cache_dir is not None else home / ".fusionzoo-cache") if cache == "disk" else None
        self.columns = Columns(modalities, label, raw)
        #: Modalities not to read at all (their samples come from elsewhere: the frozen-feature cache).
        self.skip: set[str] = set()
        self.source = read_source(path)
        self.origin = self.source.origin
        columns, rows = self.source.columns, self.source.rows
        for where, column in self.columns.columns:
            if column not in columns:
                raise ValueError(f"{where}: {self.origin} has no column {column!r} (it has {columns})")
        assigned = self._assign_splits(splits, columns, rows)
        mine = [(line, row) for (line, row), s in zip(rows, assigned) if s == split]
        self.skipped: list[dict[str, Any]] = []
        records = self._read_rows(mine, decode=check == "decode" or cache == "memory")
        if fitted is None:
            fitted = self.columns.fit(records, self.origin) if split == "train" else ManifestDataset(**self._args, split="train").fitted
        self.columns.use(fitted)
        self.records = self._finish_rows(records)
        if not self.records:
            raise ValueError(f"{self.origin}: no usable rows in the {split!r} split" + (f" ({len(self.skipped)} skipped)" if self.skipped else ""))
        if self.task == "multiclass":
            self.labels = np.array([r.label for r in self.records], dtype=np.int64)

    def fingerprint(self) -> str:
        """SHA-256 of what this split is made from: the table's content (a manifest file's bytes),
        every file a cell names (its path under ``root``, size and modification time) and every
        feature vector's values, so a changed table or file gives another fingerprint (``--resume``
        compares them)."""
        h = hashlib.sha256(self.source.digest.encode())
        for record in self.records:
            for m in sorted(record.values):
                value = record.values[m]
                if isinstance(value, Path):
                    stat = value.stat()
                    where = value.relative_to(self.root) if value.is_relative_to(self.root) else value
                    h.update(f"{m}:{where}:{stat.st_size}:{stat.st_mtime_ns};".encode())
                elif isinstance(value, bytes):
                    h.update(hashlib.sha256(value).digest())
                elif isinstance(value, torch.Tensor):
                    h.update(value.numpy().tobytes())
        return h.hexdigest()

    # -- configuration ---------------------------------------------------------------------------

    @staticmethod
    def _check_options(split: str, on_error: str, cache: str, cache_dir: Any, check: str, splits: Any, folds: Any) -> None:
        if split not in SPLITS:
            raise ValueError(f"manifest: split must be one of {SPLITS}, got {split!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error: 'raise' or 'skip', got {on_error!r}")
        if cache not in ("none", "memory", "disk"):
            raise ValueError(f"cache: 'none', 'memory' or 'disk', got {cache!r}")
        if cache_dir is not None and cache != "disk":
            raise ValueError(f"cache_dir: only used with cache: disk (cache is {cache!r})")
        if check not in ("header", "decode"):
            raise ValueError(f"check: 'header' or 'decode', got {check!r}")
        if folds is not None and splits is not None:
            raise ValueError("folds: the splits come from the folds; give splits or folds, not both")

    def _assign_splits(self, splits: Mapping[str, Any] | None, columns: list[str], rows: list[tuple[int, dict]]) -> list[str]:
        if self.folds is not None:
            return self._fold_splits(columns, rows)
        if splits is None:
            if "split" not in columns:
                raise ValueError(f"splits: {self.origin} has no 'split' column; name one ({{column: NAME}}) or draw them ({{val: 0.1, test: 0.1, seed: 0}})")
            splits = {"column": "split"}
        if not isinstance(splits, Mapping):
            raise ValueError(f"splits: {{column: NAME}} or {{val: FRACTION, test: FRACTION, seed: INT}}, got {splits!r}")
        if "column" in splits:
            if set(splits) != {"column"}:
                raise ValueError(f"splits: either a column or fractions, got {dict(splits)}")
            column = splits["column"]
            if column not in columns:
                raise ValueError(f"splits.column: {self.origin} has no column {column!r} (it has {columns})")
            out = []
            for line, row in rows:
                value = str(row.get(column) if row.get(column) is not None else "").strip()
                if value not in SPLITS:
                    raise ValueError(f"{self.source.at(line)}: column {column!r}: split must be one of {SPLITS}, got {value!r}")
                out.append(value)
            return out
        unknown = sorted(set(splits) - {"val", "test", "seed"})
        if unknown:
            raise ValueError(f"splits.{unknown[0]}: unknown key (allowed: column, or val, test, seed)")
        val, test = float(splits.get("val", 0.0)), float(splits.get("test", 0.0))
        if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
            raise ValueError(f"splits: val and test are fractions with val + test < 1, got val={val}, test={test}")
        return draw_splits([str(row.get(self.label_column)) if self.task == "multiclass" else "" for _, row in rows], val, test, int(splits.get("seed", 0)))

    def _fold_splits(self, columns: list[str], rows: list[tuple[int, dict]]) -> list[str]:
        """The splits of fold ``folds.fold`` (:mod:`fusionzoo.data.folds`): rows grouped by
        ``folds.group`` (an empty cell: no group, dealt stratified by class)."""
        k, fold, seed, group = self.folds["k"], self.folds["fold"], self.folds["seed"], self.folds.get("group")
        if group is not None and group not in columns:
            raise ValueError(f"folds.group: {self.origin} has no column {group!r} (it has {columns})")
        groups = None if group is None else [None if empty(row.get(group)) else str(row.get(group)).strip() for _, row in rows]
        strata = [str(row.get(self.label_column)) if self.task == "multiclass" else "" for _, row in rows]
        return fold_splits(assign_folds(strata, groups, k, seed), k, fold)

    # -- reading rows ----------------------------------------------------------------------------

    def _fail(self, line: int, column: str, message: str) -> None:
        if self.on_error == "raise":
            raise ValueError(f"{self.source.at(line)}: column {column!r}: {message}")
        self.skipped.append({"line": line, "column": column, "error": message})

    def _read_rows(self, rows: list[tuple[int, dict]], decode: bool) -> list[Record]:
        """First pass: parse the label and check every cell (decode images and audio with ``decode``)."""
        records = []
        self._cache: dict[tuple[int, str], torch.Tensor] = {}
        for line, row in rows:
            try:
                record = self.columns.read_row(line, row, self.root)
                if decode:
                    for m, spec in self.specs.items():
                        if spec.reader is not None and record.values[m] is not None:
                            try:
                                tensor = spec.reader.decode(record.values[m])
                            except CellError as e:
                                raise RowError(spec.column, str(e)) from None
                            if self.cache == "memory":
                                self._cache[(len(records), m)] = tensor
            except RowError as e:
                for m in self.specs:
                    self._cache.pop((len(records), m), None)
                self._fail(line, e.column, str(e))
                continue
            records.append(record)
        return records

    def _finish_rows(self, records: list[Record]) -> list[Record]:
        """Second pass: labels to indices, texts to ids, feature widths checked."""
        done, cache = [], {}
        for index, record in enumerate(records):
            try:
                self.columns.finish(record)
            except RowError as e:
                self._fail(record.line, e.column, str(e))
                continue
            for m in self.specs:
                if (index, m) in self._cache:
                    cache[(len(done), m)] = self._cache[(index, m)]
            done.append(record)
        self._cache = cache
        return done

    # -- samples ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]

        def decode(spec: Any, source: Any) -> torch.Tensor:
            decoded = self._cache.get((i, spec.name))
            if decoded is None:
                decoded = self._disk.load(source, spec.reader) if self._disk is not None else spec.reader.decode(source)
            return decoded

        try:
            return self.columns.sample(record, self.split == "train", decode, self.skip)
        except RowError as e:
            raise ValueError(f"{self.source.at(record.line)}: column {e.column!r}: {e}") from None

    def line_of(self, i: int) -> int:
        """The manifest line sample ``i`` came from."""
        return self.records[i].line

    def smaller_than(self, modality: str, pixels: int) -> list[tuple[int, str]]:
        """``(line, "WxH")`` of every image of ``modality`` narrower or lower than ``pixels`` once read
        (at the column's ``size`` when it has one): read from the file headers, nothing decoded."""
        reader = self.specs[modality].reader
        if reader.size is not None:
            h, w = reader.size
            return [] if min(h, w) >= pixels else [(r.line, f"{w}x{h}") for r in self.records[:1]]
        small = []
        for record in self.records:
            path = record.values.get(modality)
            size = image_size(path) if isinstance(path, (Path, bytes)) else None
            if size is not None and min(size) < pixels:
                small.append((record.line, f"{size[0]}x{size[1]}"))
        return small

    def shorter_than(self, modality: str, samples: int) -> list[tuple[int, int]]:
        """``(line, samples)`` of every clip of ``modality`` shorter than ``samples`` once read (at the
        column's ``sample_rate``, cut to ``max_seconds``): read from the file headers, nothing decoded."""
        import soundfile

        reader = self.specs[modality].reader
        short = []
        for record in self.records:
            path = record.values.get(modality)
            if isinstance(path, (Path, bytes)):
                info = soundfile.info(io.BytesIO(path) if isinstance(path, bytes) else str(path))
                n = round(info.frames * reader.sample_rate / info.samplerate)
                n = n if reader.max_samples is None else min(n, reader.max_samples)
                if n < samples:
                    short.append((record.line, n))
        return short


def from_dataframe(frame: Any, **options: Any) -> ManifestDataset:
    """A pandas DataFrame as a dataset of one split: the manifest's options (``modalities``,
    ``label``, ``splits`` or ``folds``, ``root``, ``split``, ...) over its columns; rows are named by
    their index label in errors. In a Python config, ``data: {name: manifest, path: frame, ...}``
    trains on it (the run folder keeps it as ``data.parquet``)."""
    if type(frame).__module__.partition(".")[0] != "pandas":
        raise TypeError(f"from_dataframe: expected a pandas DataFrame, got {type(frame).__name__}")
    return ManifestDataset(path=frame, **options)


def draw_splits(groups: list[str], val: float, test: float, seed: int) -> list[str]:
    """``train``/``val``/``test`` for each row: within each group (a class; one group when not
    stratified), a seeded permutation's first ``round(n * test)`` rows are test, the next
    ``round(n * val)`` val."""
    rng = np.random.default_rng(seed)
    out = ["train"] * len(groups)
    for g in sorted(set(groups)):
        index = np.flatnonzero(np.array(groups) == g)
        index = index[rng.permutation(len(index))]
        n_test, n_val = round(len(index) * test), round(len(index) * val)
        for i in index[:n_test]:
            out[i] = "test"
        for i in index[n_test : n_test + n_val]:
            out[i] = "val"
    return out
