"""The DataLoader recipe: seeded, distributed-aware, pinned on CUDA."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from fusionzoo.data.collate import collate

__all__ = ["make_loader"]


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    distributed: bool | None = None,
    seed: int = 0,
    drop_last: bool = False,
    preprocess: Mapping[str, Callable[[list], Any]] | None = None,
) -> DataLoader:
    """A ``DataLoader`` with :func:`~fusionzoo.data.collate.collate`, a seeded generator (same order
    for the same seed), persistent workers, pinned memory when CUDA is available, and a
    ``DistributedSampler`` when ``distributed`` (default: when ``torch.distributed`` is initialised,
    as under ``torchrun``). With a distributed sampler, call ``loader.sampler.set_epoch(epoch)``.
    ``preprocess`` (modality -> the encoder's preprocessor) runs in collation, in the workers.

    A streaming dataset (:class:`~fusionzoo.data.stream.ShardStream`) shuffles, splits between
    ranks and workers and cuts its epoch itself (:meth:`~fusionzoo.data.stream.ShardStream.stream`);
    its workers are not persistent, so each epoch's workers get the epoch (``dataset.set_epoch``).
    """
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    if isinstance(dataset, IterableDataset):
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        dataset = dataset.stream(batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, rank=rank, world=world)
        shuffle, distributed = False, False
    sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last) if distributed else None
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=partial(collate, preprocess=dict(preprocess)) if preprocess else collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0 and not isinstance(dataset, IterableDataset),
        worker_init_fn=_seed_worker,
        generator=generator,
        drop_last=drop_last,
    )
