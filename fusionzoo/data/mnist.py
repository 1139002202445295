"""``mnist``: handwritten digits alone, for single-modality transfer recipes (split MNIST).

Reads the four idx files of the avdigits folder's ``mnist/`` (``root`` names the avdigits folder or
the ``mnist`` folder itself). ``digits`` picks the classes and relabels them ``0..len(digits)-1`` in
the order given, so ``digits: [5, 6, 7, 8, 9]`` is a five-class task whose class 0 is the digit 5.

* ``split="test"``: every ``t10k`` image of those digits;
* ``split="val"``: the last ``val_per_class`` training images of each digit (default 100);
* ``split="train"``: the training images before those, the first ``labels_per_class`` of each digit
  when given (the label budget), in file order (deterministic).

Samples: ``{"visual": float [1, 28, 28] (standardised with MNIST's mean and std; in [0, 1] with
``normalize=False``), "label": int}``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fusionzoo.data.avdigits import DEFAULT_ROOT, MNIST_FILES, MNIST_MEAN, MNIST_STD, read_idx
from fusionzoo.registry import DATASETS

__all__ = ["MNIST"]

SPLITS = ("train", "val", "test")


@DATASETS.register("mnist", paper="http://yann.lecun.com/exdb/mnist/", tags=("real", "visual"))
class MNIST(Dataset):
    """MNIST images of chosen digits (see the module docstring)."""

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        split: str = "train",
        digits: Sequence[int] = tuple(range(10)),
        labels_per_class: int | None = None,
        val_per_class: int = 100,
        normalize: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"mnist: split must be one of {SPLITS}, got {split!r}")
        digits = [int(d) for d in digits]
        if not digits or len(set(digits)) != len(digits) or not all(0 <= d <= 9 for d in digits):
            raise ValueError(f"mnist: digits must be distinct digits 0-9, got {digits}")
        if val_per_class < 1 or (labels_per_class is not None and labels_per_class < 1):
            raise ValueError(f"mnist: val_per_class and labels_per_class must be positive, got {val_per_class}, {labels_per_class}")
        base = Path(root if root is not None else os.environ.get("FUSIONZOO_AVDIGITS", DEFAULT_ROOT))
        folder = base if (base / MNIST_FILES["train"][0]).is_file() else base / "mnist"
        images_file, labels_file = MNIST_FILES["test" if split == "test" else "train"]
        for name in (images_file, labels_file):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"mnist: {folder / name} not found; root names the avdigits folder or its mnist/ folder")
        images, labels = read_idx(folder / images_file), read_idx(folder / labels_file)
        keep = []
        for d in digits:
            index = np.flatnonzero(labels == d)
            if split == "val":
                index = index[-val_per_class:]
            elif split == "train":
                index = index[:-val_per_class][:labels_per_class]
            keep.append(index)
        index = np.sort(np.concatenate(keep))
        relabel = {d: i for i, d in enumerate(digits)}
        self.split, self.digits, self.modalities, self.index = split, digits, ("visual",), index  # index: rows of the idx file
        self.standardized = ("visual",) if normalize else ()
        pixels = images[index].astype(np.float32) / 255.0
        self.images = (((pixels - MNIST_MEAN) / MNIST_STD) if normalize else pixels)[:, None].astype(np.float32)
        self.labels = np.array([relabel[int(y)] for y in labels[index]], dtype=np.int64)
        self.num_classes = len(digits)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"visual": torch.from_numpy(self.images[i]), "label": int(self.labels[i])}
