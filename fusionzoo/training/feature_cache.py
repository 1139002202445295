"""The frozen-feature cache: a frozen encoder's output computed once per sample, then reused.

Legend: ``b`` batch, ``n`` tokens, ``d`` features.

``train.feature_cache: memory | disk`` applies to every encoder left without a trainable parameter
(``strategy: linear_probe``, ``init_from.freeze``; not ``gradual``, which unfreezes later). Such an
encoder is a fixed feature extractor (eval mode, :func:`~fusionzoo.transfer.fix_frozen_encoders`), so
its output for a sample is the same at every step: before the first epoch the engine runs it once
over every sample of every split, in batches, under the same autocast as training, and keeps the
output (pooled ``[d]``, or the valid tokens ``[n, d]`` for token fusion); the splits then give
:class:`~fusionzoo.data.collate.Features` in place of that modality's raw input and the model skips
the encoder. Results equal the uncached run's to float rounding (the cache batches samples
differently, so padded lengths differ), not bit for bit.

The key of a cached output is the encoder's digest (its registry name and config section, the
fusion's input kind, device type and dtype settings, every weight, and the files its preprocessing
writes: tokenizer, processor) and the sample's digest (its raw value: the string, the decoded
waveform or image). So a changed weight, option, tokenizer or file is computed again, never read
stale. ``disk`` keeps one safetensors file per encoder digest in ``feature_cache_dir`` (default
``~/.cache/fusionzoo/features``), which runs and ``compare`` cells with the same frozen encoder share;
each writer adds what it computed (written atomically; a concurrent writer's additions may be
computed again, never lost into a wrong value).

An input augmented at random (a manifest column with ``augment``, or a training sample that reads
differently twice) cannot be cached: that encoder keeps running, with a one-line notice.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn
from torch.utils.data import Dataset

from fusionzoo.atomic import write_bytes_atomic
from fusionzoo.data.collate import Features, collate
from fusionzoo.encoders.base import input_kwargs, preprocessors
from fusionzoo.training.evaluate import move_batch

__all__ = ["FeatureCache", "encoder_digest", "sample_digest", "cacheable_modalities", "compute_features", "default_cache_dir"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fusionzoo" / "features"


def sample_digest(value: Any) -> str:
    """SHA-256 of a raw sample value: a string, a tensor (dtype, shape and bytes) or a nested mix."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{list(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(v, str):
            h.update(b"S" + v.encode("utf-8"))
        elif isinstance(v, dict):
            for k in sorted(v):
                h.update(f"K{k}".encode())
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            h.update(f"L{len(v)}".encode())
            for x in v:
                feed(x)
        else:
            h.update(f"V{type(v).__name__}{v!r}".encode())

    feed(value)
    return h.hexdigest()


def encoder_digest(encoder: nn.Module, section: dict[str, Any], kind: str, context: dict[str, Any]) -> str:
    """SHA-256 of everything that decides a cached output besides the sample (see the module docstring)."""
    h = hashlib.sha256(json.dumps({"section": section, "kind": kind, **context, "torch": torch.__version__}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    save_files = getattr(encoder, "save_preprocessing", None)
    if save_files is not None:
        with tempfile.TemporaryDirectory() as tmp:
            save_files(Path(tmp))
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def cacheable_modalities(model: nn.Module, train_set: Any, say: Callable[[str], None]) -> list[str]:
    """The modalities whose encoder has no trainable parameter and whose training input is not
    augmented at random (``train_set.augmented``, and two reads of a sample agree)."""
    frozen = [m for m, enc in model.encoders.items() if not any(p.requires_grad for p in enc.parameters())]
    augmented = set(getattr(train_set, "augmented", ()))
    keep = []
    for m in frozen:
        if m in augmented or _reads_differently(train_set, m):
            say(f"train.feature_cache: {m!r} is augmented at random in training, so its frozen encoder runs at every step (not cached)")
        else:
            keep.append(m)
    return keep


def _reads_differently(dataset: Any, m: str, probes: int = 2) -> bool:
    for i in range(min(probes, len(dataset))):
        a, b = dataset[i].get(m), dataset[i].get(m)
        if (a is None) != (b is None) or (a is not None and sample_digest(a) != sample_digest(b)):
            return True
    return False


class _Store:
    """Cached outputs by sample digest: in memory, or also in one safetensors file (``path``)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.items, self.added = path, {}, 0
        if path is not None and path.is_file():
            try:
                self.items = load_file(str(path))
            except (SafetensorError, OSError):  # a damaged cache file is computed again, never trusted
                self.items = {}

    def write(self) -> None:
        if self.path is not None and self.added:
            merged = {**(_Store(self.path).items if self.path.is_file() else {}), **self.items}
            write_bytes_atomic(self.path, save(merged, metadata={"library": "fusionzoo", "what": "frozen encoder outputs"}))


@torch.no_grad()
def compute_features(
    model: nn.Module, m: str, datasets: dict[str, Any], store: _Store, *, device: torch.device, autocast: bool, batch_size: int,
) -> dict[str, dict[int, Tensor]]:
    """``{split: {index: output}}`` of ``model.encoders[m]`` for every sample holding ``m``, from
    ``store`` where it has the sample's digest, computed in batches (and added to it) where not."""
    tokens = model.fusion.input_kind == "tokens"
    encoder = model.encoders[m].eval()
    preprocess = preprocessors({m: encoder})
    out: dict[str, dict[int, Tensor]] = {}
    for split, dataset in datasets.items():
        table: dict[int, Tensor] = {}
        todo: list[tuple[int, str, Any]] = []
        for i in range(len(dataset)):
            raw = dataset[i].get(m)
            if raw is None:
                continue
            key = sample_digest(raw)
            if key in store.items:
                table[i] = store.items[key]
            else:
                todo.append((i, key, raw))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = collate([{m: raw, "label": 0} for _, _, raw in chunk], preprocess=preprocess)
            batch = move_batch(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                if tokens:
                    feats, mask = encoder.forward_tokens(batch[m], **input_kwargs(encoder, batch, m))
                else:
                    feats, mask = encoder(batch[m], **input_kwargs(encoder, batch, m)), None
            for row, (i, key, _) in enumerate(chunk):
                value = feats[row] if mask is None else feats[row][mask[row]]
                table[i] = store.items[key] = value.detach().cpu().contiguous().clone()
                store.added += 1
        out[split] = table
    return out


class FeatureCache(Dataset):
    """``dataset`` with each cached modality's input replaced by ``Features(output)``. A dataset
    with a ``skip`` set (the manifest) is told not to read those modalities at all; the others are
    read and dropped. Attributes the wrapped dataset has (``num_classes``, ``task``, ``fitted``, ...)
    read through."""

    def __init__(self, dataset: Any, tables: dict[str, dict[int, Tensor]]) -> None:
        self.dataset, self.tables = dataset, tables
        if isinstance(getattr(dataset, "skip", None), set):
            dataset.skip |= set(tables)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "tables"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.dataset[index])
        for m, table in self.tables.items():
            sample.pop(m, None)
            if index in table:  # the samples that hold m
                sample[m] = Features(table[index])
        return sample


def cache_datasets(
    cfg: Any, model: nn.Module, datasets: dict[str, Any], modalities: Iterable[str], *, device: torch.device, say: Callable[[str], None],
) -> dict[str, Any]:
    """Every split wrapped in a :class:`FeatureCache` of ``modalities``; says what it reused and computed."""
    settings = cfg.train
    section = (cfg.model or {}).get("encoders", {})
    autocast = device.type == "cuda" and settings.amp
    folder = Path(settings.feature_cache_dir).expanduser() if settings.feature_cache_dir else default_cache_dir()
    tables: dict[str, dict[str, dict[int, Tensor]]] = {split: {} for split in datasets}
    for m in modalities:
        context = {"modality": m, "device": device.type, "autocast": autocast}
        digest = encoder_digest(model.encoders[m], dict(section.get(m, {})), model.fusion.input_kind, context)
        store = _Store(folder / f"{digest}.safetensors" if settings.feature_cache == "disk" else None)
        computed = compute_features(model, m, datasets, store, device=device, autocast=autocast, batch_size=max(settings.batch_size, 64))
        store.write()
        for split, table in computed.items():
            tables[split][m] = table
        reused = sum(map(len, computed.values())) - store.added
        say(f"train.feature_cache: {m} encoder's output cached ({store.added} samples computed, {reused} read from {settings.feature_cache})")
    return {split: FeatureCache(d, tables[split]) if tables[split] else d for split, d in datasets.items()}
