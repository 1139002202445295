"""Where a manifest's rows come from: one column specification (``kind``, empty = missing, labels,
splits, folds) over every table a user keeps their data in.

* a **CSV** (header row) or **JSONL** file: rows numbered by their line;
* a **Parquet** file, or a folder of them (``pyarrow``): rows numbered from 0 in file order;
* a **pandas DataFrame** (from Python): rows named by their index label;
* a **Hugging Face dataset** (``datasets.Dataset``, or a ``DatasetDict`` whose ``train`` /
  ``validation`` / ``test`` splits become a ``split`` column): rows numbered from 0.

A cell holds what the column's kind reads: a file path (relative to ``root``), the bytes of an
encoded image or audio file, a ``{bytes, path}`` struct (Hugging Face ``Image`` and ``Audio``
features, read undecoded), text, or numbers (a list, an array). A null, NaN or empty cell is a
missing modality. :func:`read_source` returns the rows as plain Python values, whatever the table.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionzoo.extras import require

__all__ = ["Rows", "read_source", "read_manifest", "is_table"]


@dataclass
class Rows:
    """A source's rows: ``columns``, ``rows`` as ``[(id, {column: value})]``, ``origin`` (what
    errors name: the file, ``DataFrame``, the dataset), ``unit`` (``line`` or ``row``: what the
    id counts) and ``digest`` (SHA-256 of the content, for fingerprints)."""

    columns: list[str]
    rows: list[tuple[Any, dict]]
    origin: str
    unit: str
    digest: str

    def at(self, row: Any) -> str:
        """``items.csv: line 12`` or ``DataFrame: row 'a17'``: where a row is, for a message."""
        return f"{self.origin}: {self.unit} {row!r}" if isinstance(row, str) else f"{self.origin}: {self.unit} {row}"


def is_table(source: Any) -> bool:
    """A pandas DataFrame or a Hugging Face dataset, rather than a path."""
    kind = type(source).__module__.partition(".")[0]
    return kind in ("pandas", "datasets")


def read_source(source: Any) -> Rows:
    """The rows of a CSV, JSONL or Parquet path, a DataFrame or a Hugging Face dataset."""
    if is_table(source):
        return _dataframe(source) if type(source).__module__.startswith("pandas") else _hf(source)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"manifest: path is a CSV, JSONL or Parquet path, a DataFrame or a Hugging Face dataset, got {type(source).__name__}")
    path = Path(source)
    if path.is_dir() or path.suffix.lower() == ".parquet":
        return _parquet(path)
    columns, rows = read_manifest(path)
    return Rows(columns, rows, str(path), "line", hashlib.sha256(path.read_bytes()).hexdigest())


def plain(value: Any) -> Any:
    """A table's cell as plain Python: numpy scalars and arrays as numbers and lists, NaN, NaT and
    ``pd.NA`` as None (missing), structs as dicts, bytes as bytes."""
    if value is None or isinstance(value, (str, bytes, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    kind = type(value).__module__.partition(".")[0]
    if kind == "numpy":
        if getattr(value, "ndim", 0):
            return [plain(v) for v in value.tolist()]
        return plain(value.item())
    if kind == "pandas":  # pd.NA, pd.NaT; a Timestamp is not a cell any kind reads
        import pandas

        return None if pandas.isna(value) else str(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def digest_rows(columns: list[str], rows: list[tuple[Any, dict]]) -> str:
    """SHA-256 of a table's columns and cells (bytes as they are, the rest as JSON)."""
    h = hashlib.sha256(json.dumps(columns).encode())
    for row_id, row in rows:
        h.update(repr(row_id).encode())
        for c in columns:
            value = row.get(c)
            h.update(value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, default=_hexed).encode())
            h.update(b"\x00")
    return h.hexdigest()


def _hexed(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


def _parquet(path: Path) -> Rows:
    """A Parquet file, or every ``*.parquet`` file of a folder in name order, as one table."""
    pq = require("pyarrow.parquet", "a Parquet manifest")
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"manifest: {path}: no Parquet file" + (" in the folder" if path.is_dir() else ""))
    import pyarrow

    try:
        table = pyarrow.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    except (pyarrow.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet table ({str(e).splitlines()[0]})") from None
    columns = list(table.column_names)
    rows = [(i, {c: plain(v) for c, v in row.items()}) for i, row in enumerate(table.to_pylist())]
    return Rows(columns, rows, str(path), "row", digest_rows(columns, rows))


def _dataframe(frame: Any) -> Rows:
    if len(set(map(str, frame.columns))) != len(frame.columns):
        raise ValueError(f"DataFrame: repeated column names {list(frame.columns)}")
    columns = [str(c) for c in frame.columns]
    rows = [(plain(index), {str(c): plain(v) for c, v in zip(frame.columns, values)}) for index, values in
            zip(frame.index, frame.itertuples(index=False, name=None))]
    return Rows(columns, rows, "DataFrame", "row", digest_rows(columns, rows))


#: A ``DatasetDict``'s split names as the manifest's ``split`` column writes them.
HF_SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}


def _hf(dataset: Any) -> Rows:
    """A ``datasets.Dataset`` (its rows) or ``DatasetDict`` (the rows of its splits, with a
    ``split`` column); ``Image`` and ``Audio`` columns are read undecoded, as ``{bytes, path}``."""
    require("datasets", "a Hugging Face dataset")
    parts = dataset.items() if hasattr(dataset, "keys") else [(None, dataset)]
    columns: list[str] = []
    rows: list[tuple[int, dict]] = []
    for name, part in parts:
        if name is not None and name not in HF_SPLITS:
            raise ValueError(f"Hugging Face dataset: split {name!r} is none of {sorted(HF_SPLITS)}; select the splits to use")
        part = undecoded(part)
        for c in part.column_names:
            if c not in columns:
                columns.append(c)
        for row in part.to_list():
            cells = {c: plain(v) for c, v in row.items()}
            if name is not None:
                cells["split"] = HF_SPLITS[name]
            rows.append((len(rows), cells))
    if hasattr(dataset, "keys") and "split" not in columns:
        columns.append("split")
    return Rows(columns, rows, "Hugging Face dataset", "row", digest_rows(columns, rows))


def undecoded(part: Any) -> Any:
    """The split with its ``Image`` and ``Audio`` columns cast to ``decode=False``."""
    from datasets import Audio, Image

    for c, feature in (part.features or {}).items():  # (a streamed hub dataset may not know them)
        if isinstance(feature, (Image, Audio)) and feature.decode:
            part = part.cast_column(c, type(feature)(decode=False))
    return part


def read_manifest(path: str | Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """``(columns, [(line number, row), ...])`` of a CSV (header row) or JSONL file; a malformed
    line raises naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest: {path} not found")
    with path.open("rb") as f:
        if f.read(2) == b"\x1f\x8b":
            raise ValueError(f"{path}: line 1: the file is gzip-compressed; decompress it (gunzip) and point data.path at the text")
    try:
        return _read_jsonl(path) if path.suffix.lower() in (".jsonl", ".ndjson") else _read_csv(path)
    except _NotText as e:
        raise ValueError(f"{path}: line {e.line}: not UTF-8 text ({e.reason}); save the file as UTF-8") from None


class _NotText(Exception):
    def __init__(self, line: int, reason: str) -> None:
        self.line, self.reason = line, reason


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(number, text)`` of every line, decoded one by one, so a byte that is not UTF-8 raises
    :class:`_NotText` with its exact line (a leading byte-order mark is dropped)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _NotText(number, f"byte {raw[e.start]:#04x} at column {e.start + 1}") from None


def _read_jsonl(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    columns: dict[str, None] = {}
    rows: list[tuple[int, dict]] = []
    for number, text in _lines(path):
        if not text.strip():
            continue
        try:
            row = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {number}: not valid JSON ({e.msg}, column {e.colno})") from None
        except _RepeatedKey as e:
            raise ValueError(f"{path}: line {number}: the key {e.args[0]!r} appears twice (which one is meant?)") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
        columns.update(dict.fromkeys(row))
        rows.append((number, row))
    return list(columns), rows


class _RepeatedKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise _RepeatedKey(k)
        seen[k] = v
    return seen


#: The largest CSV cell read (inline features, long captions): csv's default is 128 KiB.
CSV_FIELD_LIMIT = 64 << 20


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    rows: list[tuple[int, dict]] = []
    limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        reader = csv.DictReader(text for _, text in _lines(path))
        header = list(reader.fieldnames or [])
        if len(set(header)) != len(header):
            raise ValueError(f"{path}: line 1: repeated column names in the header {header}")
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                cells = len(header) + len(row.get(None, [])) - sum(v is None for v in row.values())
                raise ValueError(f"{path}: line {reader.line_num}: {cells} cells, the header has {len(header)}")
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise ValueError(f"{path}: line {reader.line_num + 1}: {e}") from None
    finally:
        csv.field_size_limit(limit)
    if not header:
        raise ValueError(f"{path}: empty file; expected a header row naming the columns")
    return header, rows




def write_parquet(rows: Rows, path: str | Path) -> Path:
    """The rows as one Parquet file, written atomically: a table given in memory (a DataFrame, a
    Hugging Face dataset) as the run folder keeps it, so ``eval`` and ``--resume`` read it back."""
    require("pyarrow", "a Parquet copy of the data")
    import pyarrow
    import pyarrow.parquet as pq

    from fusionzoo.atomic import atomic_path

    table = pyarrow.Table.from_pylist([{c: row.get(c) for c in rows.columns} for _, row in rows.rows])
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, str(tmp))
    return Path(path)
