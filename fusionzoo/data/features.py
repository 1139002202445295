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
        try:
            dims = json.loads(meta["dims"])
        except ValueError:
            dims = None
        if not isinstance(dims, dict) or not all(isinstance(d, int) and d > 0 for d in dims.values()):
            raise ValueError(f"features: {file}: its dims metadata is not {{modality: width}}: {meta['dims']!r}")
        chosen = sorted(dims) if modalities is None else list(modalities)
        unknown = [m for m in chosen if m not in dims]
        if unknown:
            raise ValueError(f"features: modalities: {file} has no {unknown[0]!r} (it has {sorted(dims)})")
        self.split, self.task, self.dims = split, meta.get("task", "multiclass"), {m: dims[m] for m in chosen}
        self.modalities = tuple(sorted(chosen))
        self.targets = tensors["label"]
        self.features, self.present = {}, {}
        for m in self.modalities:
            self.features[m], self.present[m] = _checked(tensors, m, dims[m], len(self.targets), file)
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


def _checked(tensors: dict, m: str, dim: int, n: int, file: Path) -> tuple:
    """``features.<m>`` ``float [n, dim]`` and ``present.<m>`` ``[n]`` as the metadata says, else an
    error naming the file and the tensor (never a silent cut or a KeyError)."""
    for key in (f"features.{m}", f"present.{m}"):
        if key not in tensors:
            raise ValueError(f"features: {file} has no tensor {key!r}")
    features, present = tensors[f"features.{m}"], tensors[f"present.{m}"]
    if features.shape != (n, dim) or not features.is_floating_point():
        raise ValueError(f"features: {file}: 'features.{m}' is {features.dtype} {list(features.shape)}, the metadata and labels say float [{n}, {dim}]")
    if present.shape != (n,):
        raise ValueError(f"features: {file}: 'present.{m}' has shape {list(present.shape)}, expected [{n}]")
    return features, present.bool()
