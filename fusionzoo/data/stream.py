"""Streaming a split from shards: an ``IterableDataset`` with a sample count per epoch.

A source (WebDataset tar shards, :mod:`fusionzoo.data.shards`) says what its shards are and how
to read one shard's rows; :class:`ShardStream` does the rest, the same for every source:

* **Training** (a shuffled loader). Every epoch the shard list is permuted with ``(seed, epoch)``
  (the same on every rank) and dealt to the readers, one per ``DataLoader`` worker of each
  ``torchrun`` rank: reader ``r`` of ``R`` reads shards ``r, r + R, ...`` of the permutation, so
  no two readers of an epoch read one shard. Each reader passes its shards' samples through a
  shuffle buffer (``shuffle_buffer`` samples, seeded with ``(seed, epoch, reader)``) and yields
  exactly its quota: the epoch is ``samples_per_epoch`` samples (default: the split's count),
  ``samples_per_epoch // world`` per rank, cut into the rank's batches and the batches dealt to its
  workers in the order the ``DataLoader`` takes them. A reader whose shards hold fewer samples than
  its quota reads them again (another pass, in another order); the rest of a longer reader's
  shards is not read this epoch. The buffer is flushed at the end of each pass, so a reader whose
  quota is its shards' count yields each of their samples once.
* **Evaluation** (an unshuffled loader, and iterating the dataset itself). Every sample once, in
  shard order: each worker reads every shard and keeps the batches that are its turn, so the
  batches come in the order one process would read them, whatever ``num_workers`` is (each
  worker reads all the shards' bytes and decodes only its own samples).

What is exact, and what is approximate:

* The samples of an epoch, and their order, are a function of the seed, the epoch, the world
  size, the number of workers and the batch size. A run resumed from the checkpoint of epoch
  ``e`` (``--resume``) streams epoch ``e + 1`` exactly as the uninterrupted run did: bitwise the same
  training on the CPU, as with map-style data. An interrupted epoch is streamed again from its
  start (checkpoints are at epoch ends), so nothing it consumed is skipped or counted twice.
* Which samples an epoch covers is exact only when every reader's shards hold its quota: equal
  shards (``fusionzoo data shard`` writes them; the last may be short), their number a multiple
  of the readers, ``samples_per_epoch`` the split's count and each rank's batches a multiple of
  its workers. Then each epoch is one pass, every sample once. Otherwise it is approximate: a reader short of its quota repeats some of its
  samples, a reader with more leaves some out, and the epoch's permutation decides which; over
  epochs this evens out. For an exact pass however the data is cut, use a map-style source (a
  manifest, Parquet).
* Order is random at two levels only: shards and the buffer. Samples closer than
  ``shuffle_buffer`` in a shard stay close; write shards from shuffled rows
  (``fusionzoo data shard`` does) so that a shard is not one class.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from fusionzoo.data.columns import ColumnAttributes, Columns, Record, RowError

__all__ = ["ShardStream", "worker_quota"]


def worker_quota(samples: int, batch_size: int, drop_last: bool, workers: int, worker: int) -> int:
    """How many of a rank's ``samples`` worker ``worker`` of ``workers`` yields: the rank's batches
    are dealt to the workers in turn (the ``DataLoader`` takes them in that order), and the last
    batch may be short (or, with ``drop_last``, left out)."""
    batches = samples // batch_size if drop_last else -(-samples // batch_size)
    quota = len(range(worker, batches, workers)) * batch_size
    if not drop_last and batches and (batches - 1) % workers == worker:
        quota -= batches * batch_size - samples
    return quota


class ShardStream(ColumnAttributes, IterableDataset):
    """The samples of one split, streamed from ``shards`` (see the module docstring). A subclass
    gives :meth:`read_shard`. ``counts``: samples per shard; ``samples_per_epoch``: the training
    epoch's length (default their sum)."""

    def __init__(
        self, *, columns: Columns, shards: list[Any], counts: list[int], split: str, root: Path, origin: str,
        shuffle_buffer: int = 1000, samples_per_epoch: int | None = None, on_error: str = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error: 'raise' or 'skip', got {on_error!r}")
        if isinstance(shuffle_buffer, bool) or not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer: an int >= 0 (0: no sample shuffling), got {shuffle_buffer!r}")
        if samples_per_epoch is not None and (isinstance(samples_per_epoch, bool) or not isinstance(samples_per_epoch, int) or samples_per_epoch < 1):
            raise ValueError(f"samples_per_epoch: an int >= 1, got {samples_per_epoch!r}")
        if not shards:
            raise ValueError(f"{origin}: the {split!r} split has no shards")
        self.columns, self.shards, self.counts, self.split = columns, list(shards), list(counts), split
        self.root, self.origin, self.on_error = root, origin, on_error
        self.shuffle_buffer, self._samples_per_epoch = shuffle_buffer, samples_per_epoch
        #: Modalities not to read at all.
        self.skip: set[str] = set()
        self.epoch, self._limit = 0, None
        # how a loader reads it (:meth:`stream`); by default, in order, as one process would
        self._batch_size, self._shuffle, self._drop_last, self._seed, self._rank, self._world = 1, False, False, 0, 0, 1

    def read_shard(self, shard: Any) -> Iterator[tuple[str, Any]]:
        """``(where, sample)`` for each sample of ``shard`` as stored: ``where`` names it in errors."""
        raise NotImplementedError

    def to_row(self, sample: Any) -> dict[str, Any]:
        """A stored sample as a row of cells (may raise :class:`~fusionzoo.data.columns.RowError`)."""
        return sample

    def describe_shard(self, shard: Any) -> str:
        """What :meth:`fingerprint` records of a shard (a file: its name, size and modification time)."""
        return str(shard)

    # -- how a loader reads it -------------------------------------------------------------------

    def stream(self, *, batch_size: int, shuffle: bool, drop_last: bool = False, seed: int = 0, rank: int = 0, world: int = 1) -> ShardStream:
        """A copy read as a ``DataLoader`` of ``batch_size`` reads it: shuffled and cut to the rank's
        quota for training, in order for evaluation (:func:`~fusionzoo.data.loader.make_loader`
        calls this)."""
        view = copy.copy(self)
        view._batch_size, view._shuffle, view._drop_last, view._seed, view._rank, view._world = batch_size, shuffle, drop_last, seed, rank, world
        return view

    @property
    def samples_per_epoch(self) -> int:
        """A training epoch's length, all ranks together: ``samples_per_epoch``, or the split's count."""
        return self._samples_per_epoch if self._samples_per_epoch is not None else sum(self.counts)

    def take(self, n: int) -> ShardStream:
        """A copy that evaluates the split's first ``n`` samples only (in shard order)."""
        view = copy.copy(self)
        view._limit = n
        return view

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration streams (its shard permutation and buffer seed)."""
        self.epoch = epoch

    def _rank_samples(self) -> int:
        n = self.samples_per_epoch // self._world
        return n // self._batch_size * self._batch_size if self._drop_last else n

    def __len__(self) -> int:
        """Samples per epoch on this rank (training), or in the split (evaluation)."""
        total = sum(self.counts)
        return self._rank_samples() if self._shuffle else total if self._limit is None else min(self._limit, total)

    def fingerprint(self) -> str:
        """SHA-256 of the epoch's length and each shard as :meth:`describe_shard` gives it (``--resume``
        compares them; the shards' folder may move)."""
        h = hashlib.sha256(f"{self.samples_per_epoch}".encode())
        for shard in self.shards:
            h.update(f"{self.describe_shard(shard)};".encode())
        return h.hexdigest()

    # -- fitting and counting, for sources that know neither -----------------------------------

    def scan(self, fitted: Mapping[str, Any] | None, count: bool) -> dict[str, Any]:
        """One pass over the split (nothing decoded): its sample counts, each spec column seen in
        some sample, and (training split, no fitted state given) the fitted state."""
        if fitted is None and self.split != "train":
            raise ValueError(f"{self.origin}: the {self.split} split needs the training split's fitted state")
        counts, seen, records = [], set(), []
        keep = {m for m, s in self.specs.items() if s.kind in ("text", "features")}
        for shard in self.shards:
            n = 0
            for where, sample in self.read_shard(shard):
                n += 1
                try:
                    row = self.to_row(sample)
                    seen.update(k for k, v in row.items() if v is not None)
                    if fitted is None:
                        record = self.columns.read_row(where, row, self.root, check=False)
                        records.append(Record(where, record.label, {m: (v if m in keep else None) for m, v in record.values.items()}))
                except RowError as e:
                    if self.on_error == "raise":
                        raise ValueError(f"{where}: column {e.column!r}: {e}") from None
            counts.append(n)
        self.check_columns(seen, self.origin)
        if count:
            self.counts = counts
        if sum(self.counts) == 0:
            raise ValueError(f"{self.origin}: no samples in the {self.split} split")
        return dict(fitted) if fitted is not None else self.columns.fit(records, self.origin)


    def columns_seen(self, shards: list[Any]) -> set[str]:
        seen: set[str] = set()
        for shard in shards:
            for where, sample in self.read_shard(shard):
                try:
                    seen.update(k for k, v in self.to_row(sample).items() if v is not None)
                except RowError as e:
                    raise ValueError(f"{where}: column {e.column!r}: {e}") from None
        return seen

    def check_columns(self, seen: set[str], where_seen: str) -> None:
        for where, column in self.columns.columns:
            if column not in seen:
                raise ValueError(f"{where}: no sample of {where_seen} has a member or json field {column!r} (they have {sorted(seen)})")

    # -- iteration -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        readers, reader = self._world * workers, self._rank * workers + worker
        if not self._shuffle:
            rows = (row for i, row in enumerate(self._in_order()) if (i // self._batch_size) % readers == reader)
            yield from self._samples(rows, None)
            return
        if len(self.shards) < readers:
            raise ValueError(
                f"{self.origin}: {len(self.shards)} {self.split} shards cannot feed {readers} readers ({self._world} ranks x "
                f"{workers} workers): write smaller shards (fusionzoo data shard --shard-size) or use fewer workers"
            )
        quota = worker_quota(self._rank_samples(), self._batch_size, self._drop_last, workers, worker)
        rng = np.random.default_rng([self._seed, self.epoch, reader])
        mine = np.random.default_rng([self._seed, self.epoch]).permutation(len(self.shards))[reader::readers]
        yield from self._samples(self._passes(mine, rng), quota)

    def _in_order(self) -> Iterator[tuple[str, Any]]:
        rows = (row for shard in self.shards for row in self.read_shard(shard))
        yield from rows if self._limit is None else itertools.islice(rows, self._limit)

    def _passes(self, mine: np.ndarray, rng: np.random.Generator) -> Iterator[tuple[str, Any]]:
        """The reader's shards, pass after pass (each after the first in a new order), each pass
        through the shuffle buffer and flushed at its end: a quota of one pass is one pass."""
        order = list(mine)
        while True:
            found = False
            for row in self._shuffled((row for k in order for row in self.read_shard(self.shards[k])), rng):
                found = True
                yield row
            if not found:
                raise ValueError(f"{self.origin}: the {self.split} shards {[str(self.shards[k]) for k in mine]} hold no samples")
            order = list(rng.permutation(mine))

    def _shuffled(self, rows: Iterator[tuple[str, Any]], rng: np.random.Generator) -> Iterator[tuple[str, Any]]:
        """A shuffle buffer: each row out is drawn at random from the ``shuffle_buffer`` last read."""
        if self.shuffle_buffer <= 1:
            yield from rows
            return
        buffer: list[tuple[str, dict]] = []
        for row in rows:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(row)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], row = row, buffer[j]
            yield row
        rng.shuffle(buffer)
        yield from buffer

    def _samples(self, rows: Iterator[tuple[str, Any]], quota: int | None) -> Iterator[dict]:
        """Rows read, finished and decoded into samples (``quota`` of them; None: all)."""
        made, skipped = 0, 0
        if quota == 0:
            return
        for where, row in rows:
            try:
                record: Record = self.columns.finish(self.columns.read_row(where, self.to_row(row), self.root))
                sample = self.columns.sample(record, self.split == "train", skip=self.skip)
            except RowError as e:
                if self.on_error == "raise":
                    raise ValueError(f"{where}: column {e.column!r}: {e}") from None
                skipped += 1
                if skipped == 1:
                    warnings.warn(f"{where}: column {e.column!r}: {e} (skipped, as on_error: skip says; further skips are not repeated)", stacklevel=2)
                continue
            yield sample
            made += 1
            if made == quota:
                return
