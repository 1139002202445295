"""``features``: train on saved encoder features (``fusionzoo embed``), the feature-transfer recipe.

``fz.create_dataset("features", path="feats/", split="train")`` reads ``feats/<split>.safetensors``
as written by :func:`~fusionzoo.training.embed.embed_run`: a sample holds each modality's feature
vector (``float [d]``; left out where ``present.<modality>`` is 0) and its label. Pair it with
``feature_mlp`` encoders (``in_dim`` = the width, in the file's metadata and :attr:`dims`).
``modalities`` keeps a subset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from safetensors import safe_open
from torch.utils.data import Dataset

from fusionzoo.registry import DATASETS

__all__ = ["FeatureDataset"]

SPLITS = ("train", "val", "test")


@DATASETS.register("features", tags=("features", "transfer"))
class FeatureDataset(Dataset):
    """Saved encoder features of one split (see the module docstring).

    Samples: ``{modality: float [d], "label": int | float | float [k]}``.
    """

    def __init__(self, *, path: str | Path, split: str = "train", modalities: Iterable[str] | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"features: split must be one of {SPLITS}, got {split!r}")
        file = Path(path) / f"{split}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"features: {file} not found; write it with `fusionzoo embed RUN --split {split} --out {path}`")
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if "dims" not in meta or "label" not in tensors:
            raise ValueError(f"features: {file} was not written by `fusionzoo embed` (no dims metadata or labels)")
        dims = json.loads(meta["dims"])
        chosen = sorted(dims) if modalities is None else list(modalities)
        unknown = [m for m in chosen if m not in dims]
        if unknown:
            raise ValueError(f"features: modalities: {file} has no {unknown[0]!r} (it has {sorted(dims)})")
        self.split, self.task, self.dims = split, meta.get("task", "multiclass"), {m: dims[m] for m in chosen}
        self.modalities = tuple(sorted(chosen))
        self.features = {m: tensors[f"features.{m}"] for m in self.modalities}
        self.present = {m: tensors[f"present.{m}"].bool() for m in self.modalities}
        self.targets = tensors["label"]
        self.num_classes = int(meta.get("num_classes", int(self.targets.max()) + 1))
        if self.task == "multiclass":
            self.labels = self.targets.numpy()
        self.source = meta.get("run")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        label = self.targets[i]
        sample: dict = {"label": int(label) if self.task == "multiclass" else (float(label) if label.dim() == 0 else label)}
        for m in self.modalities:
            if self.present[m][i]:
                sample[m] = self.features[m][i]
        return sample
