"""``webdataset``: samples streamed from WebDataset tar shards, and ``fusionzoo data shard``, which writes them.

A shard is a tar file of samples, each a group of members sharing a key: ``000042.visual.png``,
``000042.audio.wav``, ``000042.text.txt``, ``000042.json``. A member's name after the key is a column
(``visual.png``; its first part, ``visual``, names it too when no other member starts so), and the
fields of the ``json`` member are columns as well (labels, numbers, groups). An absent member is a
missing modality. The column specification is the manifest's (:mod:`fusionzoo.data.columns`)::

    data:
      name: webdataset
      path: shards/shards.json              # the index `fusionzoo data shard` writes: splits, counts,
                                            # the column specification and the training split's fitted state
      shuffle_buffer: 1000                  # samples per reader (0: shards in order, samples as written)
      samples_per_epoch: null               # default: the training split's count

or shards written elsewhere (open_clip's, img2dataset's), with the specification given::

    data:
      name: webdataset
      shards: {train: "data/train-{000000..000099}.tar", val: "data/val-{000000..000004}.tar", test: [data/test.tar]}
      samples: {train: 100000, val: 5000, test: 5000}    # optional: without it, each split is counted at start
      modalities: {visual: {column: jpg, kind: image, size: [224, 224]}, text: {column: txt, kind: text}}
      label: {column: cls}                  # a member (cls, txt) or a json field

Without an index, the training split is read once at start (no image or audio decoded) to fit
what the column specification fits (the label list, a vocabulary, feature widths) and to count
samples, unless ``label.classes`` and ``samples`` make that unnecessary. How the stream is shuffled,
split between workers and ranks, and resumed: :mod:`fusionzoo.data.stream`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fusionzoo.atomic import atomic_folder, write_json_atomic
from fusionzoo.data.columns import TEXT_OPTIONS, Columns, Record, RowError
from fusionzoo.data.manifest import ManifestDataset
from fusionzoo.data.stream import ShardStream
from fusionzoo.extras import require
from fusionzoo.registry import DATASETS

__all__ = ["WebDataset", "write_shards", "INDEX"]

SPLITS = ("train", "val", "test")
#: The index of a folder of shards (what ``fusionzoo data shard`` writes last).
INDEX = "shards.json"
FORMAT = 1


def _row(sample: Mapping[str, Any], columns: set[str]) -> dict[str, Any]:
    """A tar sample as a row: each member by its name and by its name's first part, the json
    member's fields for the columns no member names. A column two members answer to
    (``visual.png`` and ``visual.jpg``) is an error when the specification reads it."""
    row: dict[str, Any] = {}
    heads: dict[str, list[str]] = {}
    for name, value in sample.items():
        if name.startswith("__"):
            continue
        row[name] = value
        if "." in name:
            heads.setdefault(name.partition(".")[0], []).append(name)
    for head, names in heads.items():
        if head in row:
            continue
        if len(names) > 1 and head in columns:
            raise RowError(head, f"the members {sorted(names)} both answer to column {head!r}: name one of them (column: {sorted(names)[0]})")
        row[head] = sample[names[0]]
    if "json" in row:
        try:
            fields = json.loads(row["json"])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RowError("json", f"the json member is not JSON: {e}") from None
        if not isinstance(fields, dict):
            raise RowError("json", f"the json member holds {type(fields).__name__}, expected an object of fields")
        for key, value in fields.items():
            row.setdefault(key, value)
    return row


@DATASETS.register("webdataset", tags=("user", "real", "stream"))
class WebDataset(ShardStream):
    """The samples of one split of WebDataset shards, streamed (see the module docstring).

    Samples: as :class:`~fusionzoo.data.manifest.ManifestDataset`'s.
    """

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        shards: Mapping[str, Any] | None = None,
        samples: Mapping[str, int] | None = None,
        modalities: Mapping[str, Mapping[str, Any]] | None = None,
        label: Mapping[str, Any] | None = None,
        root: str | Path | None = None,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = None,
        on_error: str = "raise",
        split: str = "train",
        fitted: Mapping[str, Any] | None = None,
        raw: tuple[str, ...] | list[str] = (),
    ) -> None:
        require("webdataset", "the webdataset data source")
        if split not in SPLITS:
            raise ValueError(f"webdataset: split must be one of {SPLITS}, got {split!r}")
        if (path is None) == (shards is None):
            raise ValueError("webdataset: give path (an index written by `fusionzoo data shard`) or shards ({train: PATTERN, val: ..., test: ...}), not both")
        index = _read_index(Path(path)) if path is not None else None
        files, counts = self._split_files(index, path, shards, samples, split)
        modalities = modalities if modalities is not None else (index or {}).get("modalities")
        label = label if label is not None else (index or {}).get("label")
        if modalities is None or label is None:
            raise ValueError(f"webdataset: {'modalities' if modalities is None else 'label'}: required (shards without an index say nothing of their columns)")
        origin = str(path) if path is not None else f"the {split} shards {shards[split]!r}"
        super().__init__(
            columns=Columns(modalities, label, raw), shards=files, counts=counts or [0] * len(files), split=split,
            root=Path(root) if root is not None else files[0].parent, origin=origin, shuffle_buffer=shuffle_buffer,
            samples_per_epoch=samples_per_epoch if split == "train" else None, on_error=on_error,
        )
        fitted = fitted if fitted is not None else (index or {}).get("fitted")
        if fitted is None or counts is None:
            fitted = self.scan(fitted, counts is None)
        elif index is None:  # nothing scanned: the first shard shows the columns are there
            self.check_columns(self.columns_seen(self.shards[:1]), f"the first shard {self.shards[0]}")
        self.columns.use(fitted)

    @staticmethod
    def _split_files(index: dict | None, path: Any, shards: Any, samples: Any, split: str) -> tuple[list[Path], list[int] | None]:
        """The split's shard files and their sample counts (None: not known)."""
        if index is not None:
            part = index["splits"].get(split)
            if part is None:
                raise ValueError(f"{path}: no {split!r} split (it has {sorted(index['splits'])})")
            return [Path(path).parent / name for name in part["shards"]], list(part["samples"])
        from webdataset.shardlists import expand_urls

        if not isinstance(shards, Mapping) or split not in shards:
            raise ValueError(f"shards: a mapping {{train: PATTERN, val: PATTERN, test: PATTERN}}; it has no {split!r}")
        given = shards[split]
        names = [n for pattern in ([given] if isinstance(given, str) else given) for n in expand_urls(str(pattern))]
        missing = [n for n in names if not Path(n).is_file()]
        if missing:
            raise ValueError(f"shards.{split}: {len(missing)} of {len(names)} shard files are not there: {missing[:3]}")
        count = (samples or {}).get(split)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError(f"samples.{split}: a count >= 1, got {count!r}")
        # a known total without per-shard counts: spread over the shards (only the sum is used)
        return [Path(n) for n in names], None if count is None else [count] + [0] * (len(names) - 1)

    def read_shard(self, shard: Path) -> Iterator[tuple[str, dict[str, Any]]]:
        from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

        for sample in group_by_keys(tar_file_expander(url_opener([{"url": str(shard)}]))):
            yield f"{shard}: sample {sample['__key__']!r}", sample

    def to_row(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        return _row(sample, {column for _, column in self.columns.columns})

    def describe_shard(self, shard: Path) -> str:
        stat = shard.stat()
        return f"{shard.name}:{stat.st_size}:{stat.st_mtime_ns}"


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"path: no shard index at {path} (write one with `fusionzoo data shard CONFIG OUT`)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a shard index ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("splits"), dict):
        raise ValueError(f"{path}: not a shard index of format {FORMAT} (write one with `fusionzoo data shard`)")
    return index


# -- writing shards ------------------------------------------------------------------------------

_IMAGE_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"), (b"RIFF", "webp"))
_AUDIO_MAGIC = ((b"RIFF", "wav"), (b"fLaC", "flac"), (b"OggS", "ogg"))


def _file_member(m: str, kind: str, value: Path | bytes) -> tuple[str, bytes]:
    if isinstance(value, Path):
        return f"{m}{value.suffix.lower()}", value.read_bytes()
    magic = _IMAGE_MAGIC if kind == "image" else _AUDIO_MAGIC
    ext = next((e for sig, e in magic if value.startswith(sig)), "bin")
    return f"{m}.{ext}", value


def _members(dataset: Any, record: Record) -> dict[str, bytes]:
    """A finished manifest record as tar members: files as they are (no re-encoding), texts as
    UTF-8, features as ``.npy``, the label as the row wrote it in ``json``."""
    out = {"json": json.dumps({"label": record.given}).encode()}
    for m, spec in dataset.specs.items():
        value = record.values[m]
        if value is None:
            continue
        if spec.kind in ("image", "audio"):
            name, data = _file_member(m, spec.kind, value)
            out[name] = data
        elif spec.kind == "text":
            out[f"{m}.txt"] = value.encode()
        else:
            buffer = io.BytesIO()
            np.save(buffer, value.numpy(), allow_pickle=False)
            out[f"{m}.npy"] = buffer.getvalue()
    return out


def write_shards(section: Mapping[str, Any], out: str | Path, shard_size: int, seed: int = 0, create: Callable[..., Any] | None = None) -> Path:
    """Write every split of a table source as WebDataset shards in ``out`` and their index
    (:data:`INDEX`). ``section``: a ``data:`` section of a table source (``manifest``,
    ``hf_dataset``), built split by split with ``create(section, split=..., fitted=..., raw=...)``
    (default: from the dataset registry). Rows go in a seeded random order (a shard is a sample of
    its split, not a run of one class); files are copied as they are, texts kept as written, and
    the index holds the column specification and the training split's fitted state. The folder
    appears whole or not at all. Returns the index's path."""
    wds = require("webdataset", "fusionzoo data shard")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"--shard-size: a number of samples >= 1, got {shard_size!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; shards go into a new folder")
    create = create or (lambda s, **derived: DATASETS.create(s["name"], **{k: v for k, v in s.items() if k != "name"}, **derived))
    modalities = section.get("modalities") or {}
    texts = tuple(m for m, s in modalities.items() if isinstance(s, Mapping) and s.get("kind") == "text")
    as_written = {**section, "modalities": {m: {k: v for k, v in s.items() if not (m in texts and k in TEXT_OPTIONS)} for m, s in modalities.items()}}
    train = create(as_written, split="train", fitted=None, raw=texts)  # texts as written, no vocabulary
    if not isinstance(train, ManifestDataset):
        raise ValueError(f"data.name: {section.get('name')!r} is not a table source; shards are written from manifest or hf_dataset data")
    columns = Columns(modalities, section["label"])
    spec = {m: {**modalities[m], "column": m} for m in train.specs}
    label = {k: v for k, v in section["label"].items() if k != "separator"} | {"column": "label"}
    fitted = columns.fit([Record(r.line, r.given, dict(r.values)) for r in train.records], train.origin)
    index: dict[str, Any] = {"format": FORMAT, "origin": train.origin, "modalities": spec, "label": label, "fitted": fitted, "splits": {}}
    with atomic_folder(out) as tmp:
        for split in SPLITS:
            dataset = train if split == "train" else create(as_written, split=split, fitted=train.fitted, raw=texts)
            order = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(dataset.records))
            names, counts = [], []
            for start in range(0, len(order), shard_size):
                names.append(f"{split}-{len(names):06d}.tar")
                chunk = order[start : start + shard_size]
                with (tmp / names[-1]).open("wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as writer:  # an int mtime: no PAX header per member (half the reading), same bytes every time
                    for i in chunk:
                        writer.write({"__key__": f"{int(i):08d}", **_members(dataset, dataset.records[i])})
                counts.append(len(chunk))
            index["splits"][split] = {"shards": names, "samples": counts, "skipped": len(dataset.skipped)}
        write_json_atomic(tmp / INDEX, index)
    return out / INDEX
