"""``synthetic``: an embedded tri-modal dataset, generated from a seed, on which fusion is needed.

The recipe. Each class is a combination of three attributes, each carried by one modality:

* **visual** ``float [1, 32, 32]``: a *shape* (square, circle, triangle) of random position, size
  and brightness, plus a distractor line segment and Gaussian pixel noise;
* **audio** ``float [t]``, 8 kHz, 0.3-0.5 s (variable length): a *pitch pattern* (an octave
  rising, falling, or flat) from a random base frequency of 300-600 Hz, plus a distractor tone
  burst at a random frequency and Gaussian noise;
* **text** ``long [l]``: a sentence of filler words holding a *colour keyword* (red, blue, green,
  each with synonyms), plus an irrelevant colour word half of the time; with probability
  ``redundancy`` it also names the shape (partial redundancy between text and image).

``num_classes`` is the product of the attribute counts: 8 = 2x2x2 (default), 12 = 3x2x2,
18 = 3x3x2, 27 = 3x3x3. Class ``y`` has attributes ``unravel_index(y, counts)``. Seeing one modality
reveals one attribute, so with 8 classes the Bayes accuracy is 25% from the image or the audio and
``25% + 25% * redundancy`` (30%) from the text; two modalities reveal two attributes (50%, or 60%
for audio + text); all three determine the class. ``noise`` (0 to 1) scales the sensor noise.
``missing_rate`` drops each modality of each sample independently (never all three).

``split="train"``, ``"val"`` and ``"test"`` draw from independent random streams of the same
``seed`` (``val`` is for model selection and early stopping, ``test`` is read once at the end);
``val_n`` and ``test_n`` set their sizes (default ``n``). With ``folds: {k, fold, seed}`` one draw of
``n`` samples is dealt into ``k`` stratified folds instead (:mod:`fusionzoo.data.folds`): fold
``fold`` is the test split, the next the validation split. ``labels_per_class`` keeps the first
``k`` training samples of each class, and ``labelled_per_class`` keeps every sample but the labels
of the first ``k`` per class (the others read -1, "unlabelled"; for distillation), both on the
training split only.
Generation is vectorised: 10,000 samples take about 4 s on one core (2000: under 1 s).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fusionzoo.data.folds import assign_folds, check_folds, fold_splits
from fusionzoo.data.sampling import first_per_class, hide_labels
from fusionzoo.vocab import PAD, UNK, Vocab
from fusionzoo.registry import DATASETS

__all__ = ["SyntheticTrimodal", "ATTRIBUTE_COUNTS", "SPLITS"]

SPLITS = ("train", "val", "test")

ATTRIBUTE_COUNTS = {8: (2, 2, 2), 12: (3, 2, 2), 18: (3, 3, 2), 27: (3, 3, 3)}
MODALITIES = ("visual", "audio", "text")
SHAPES = ("square", "circle", "triangle")
PATTERNS = ("rising", "falling", "flat")
KEYWORDS = (("red", "crimson", "scarlet"), ("blue", "azure", "navy"), ("green", "emerald", "olive"))
DISTRACTOR_COLOURS = ("yellow", "purple", "orange", "pink", "grey")
FILLER = (
    "the a this that it is was seems looks sounds like an object thing item here there now then very "
    "quite rather small large bright dark soft loud near far left right up down with and of on in"
).split()
WORDS = sorted(set(FILLER) | set(SHAPES) | {w for group in KEYWORDS for w in group} | set(DISTRACTOR_COLOURS))


@DATASETS.register(
    "synthetic",
    example_kwargs={"n": 64},
    tags=("embedded", "trimodal"),
)
class SyntheticTrimodal(Dataset):
    """Tri-modal synthetic classification where each class needs all three modalities (see module doc).

    Samples: ``{"visual": float [1, s, s], "audio": float [t], "text": long [l], "label": int}``
    (a modality dropped by ``missing_rate`` is absent from the dict).
    """

    def __init__(
        self,
        *,
        n: int = 2000,
        num_classes: int = 8,
        noise: float = 0.5,
        redundancy: float = 0.2,
        missing_rate: float = 0.0,
        seed: int = 0,
        split: str = "train",
        image_size: int = 32,
        sample_rate: int = 8000,
        duration: float = 0.5,
        labels_per_class: int | None = None,
        labelled_per_class: int | None = None,
        val_n: int | None = None,
        test_n: int | None = None,
        folds: Mapping[str, Any] | None = None,
    ) -> None:
        if num_classes not in ATTRIBUTE_COUNTS:
            raise ValueError(f"synthetic: num_classes must be one of {sorted(ATTRIBUTE_COUNTS)}, got {num_classes}")
        if split not in SPLITS:
            raise ValueError(f"synthetic: split must be one of {SPLITS}, got {split!r}")
        folds = None if folds is None else check_folds(folds, "synthetic: folds")
        if folds is not None and (val_n is not None or test_n is not None):
            raise ValueError("synthetic: folds split one draw of n samples; val_n and test_n do not apply")
        if folds is None:
            n = {"train": n, "val": n if val_n is None else val_n, "test": n if test_n is None else test_n}[split]
        if n <= 0:
            raise ValueError(f"synthetic: the {split} split must have a positive size, got {n}")
        for name, value in (("noise", noise), ("redundancy", redundancy), ("missing_rate", missing_rate)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"synthetic: {name} must be in [0, 1], got {value}")
        if image_size < 24:
            raise ValueError(f"synthetic: image_size must be at least 24, got {image_size}")
        self.n, self.num_classes, self.noise, self.redundancy = n, num_classes, noise, redundancy
        self.modalities = MODALITIES
        self.sample_rates = {"audio": sample_rate}
        self.sample_rate, self.image_size = sample_rate, image_size
        self.counts = ATTRIBUTE_COUNTS[num_classes]
        self.vocab = Vocab([PAD, UNK, *WORDS])
        rng = np.random.default_rng([seed, {"train": 0, "test": 1, "val": 2}[split] if folds is None else 3])  # folds: one pool
        self.labels = rng.integers(0, num_classes, n)
        self.attributes = np.stack(np.unravel_index(self.labels, self.counts), axis=1)  # [n, 3]
        self.images = self._images(rng, self.attributes[:, 0])
        self.audio, self.audio_lengths = self._audio(rng, self.attributes[:, 1], duration)
        self.texts, self.names_shape = self._texts(rng, self.attributes[:, 2], self.attributes[:, 0])
        keep = rng.random((n, 3)) >= missing_rate
        nothing = ~keep.any(axis=1)
        keep[nothing, rng.integers(0, 3, int(nothing.sum()))] = True  # never drop all three
        self.keep = keep
        if folds is not None:  # this split's folds of the pool, stratified by class
            fold_of = assign_folds(self.labels.tolist(), None, folds["k"], folds["seed"])
            self._subset(np.flatnonzero(np.array(fold_splits(fold_of, folds["k"], folds["fold"])) == split))
        if labels_per_class is not None and split == "train":
            self._subset(first_per_class(self.labels, labels_per_class))
        self.targets = self.labels.copy()
        if labelled_per_class is not None and split == "train":
            self.targets = hide_labels(self.labels, labelled_per_class)

    def _subset(self, index: np.ndarray) -> None:
        self.n = len(index)
        for name in ("labels", "attributes", "images", "audio", "audio_lengths", "names_shape", "keep"):
            setattr(self, name, getattr(self, name)[index])
        self.texts = [self.texts[i] for i in index]

    # ------------------------------------------------------------------ generators

    def _images(self, rng: np.random.Generator, shape: np.ndarray) -> np.ndarray:
        n, s = len(shape), self.image_size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        cx, cy = (rng.uniform(9, s - 9, (n, 1, 1)).astype(np.float32) for _ in range(2))
        r = rng.uniform(5, 8, (n, 1, 1)).astype(np.float32)
        dx, dy = xx - cx, yy - cy
        square = np.maximum(np.abs(dx), np.abs(dy)) <= r
        circle = dx**2 + dy**2 <= r**2
        triangle = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
        masks = np.where(shape[:, None, None] == 0, square, np.where(shape[:, None, None] == 1, circle, triangle))
        img = masks * rng.uniform(0.6, 1.0, (n, 1, 1)).astype(np.float32)
        # Distractor: a horizontal or vertical segment, anywhere, in any class.
        pos, start = rng.integers(0, s, (n, 1, 1)), rng.integers(0, s - 10, (n, 1, 1))
        length = rng.integers(4, 11, (n, 1, 1))
        horizontal = rng.random((n, 1, 1)) < 0.5
        along, across = np.where(horizontal, xx, yy), np.where(horizontal, yy, xx)
        line = (across == pos) & (along >= start) & (along < start + length)
        img = np.maximum(img, line * rng.uniform(0.3, 0.8, (n, 1, 1)))
        img = img + rng.normal(0, 0.3 * self.noise, img.shape)
        return img.astype(np.float32)[:, None]

    def _audio(self, rng: np.random.Generator, pattern: np.ndarray, duration: float) -> tuple[np.ndarray, np.ndarray]:
        n, sr = len(pattern), self.sample_rate
        total = int(round(duration * sr))
        lengths = rng.integers(int(0.6 * total), total + 1, n)
        t = (np.arange(total, dtype=np.float32) / sr)[None]
        d = (lengths / sr).astype(np.float32)[:, None]
        f0 = rng.uniform(300, 600, (n, 1)).astype(np.float32)
        amp = rng.uniform(0.3, 1.0, (n, 1)).astype(np.float32)
        b0 = (rng.uniform(0, 0.7, (n, 1)) * d).astype(np.float32)
        b1 = b0 + rng.uniform(0.05, 0.1, (n, 1)).astype(np.float32)
        b_amp = rng.uniform(0.1, 0.5, (n, 1)).astype(np.float32)
        b_freq = rng.uniform(200, 2000, (n, 1)).astype(np.float32)
        # Phase = 2 pi * integral of the instantaneous frequency, per pattern (u = t / d in [0, 1]).
        phase = np.empty((n, total), dtype=np.float32)
        k = np.float32(1 / math.log(2.0))
        for p in range(3):
            rows = pattern == p
            u = np.minimum(t / d[rows], 1.0)
            if p == 0:  # rising: f0 * 2^u
                phase[rows] = f0[rows] * d[rows] * k * (np.exp2(u) - 1)
            elif p == 1:  # falling: 2 f0 * 2^-u
                phase[rows] = 2 * f0[rows] * d[rows] * k * (1 - np.exp2(-u))
            else:  # flat: f0 * sqrt(2)
                phase[rows] = f0[rows] * np.float32(math.sqrt(2)) * t
        fade = np.clip(np.minimum(t, d - t) / np.float32(0.01), 0, 1)
        wave = amp * fade * np.sin(np.float32(2 * np.pi) * phase)
        # Distractor: a 50-100 ms tone burst at a random frequency.
        wave += ((t >= b0) & (t < b1)) * b_amp * np.sin(np.float32(2 * np.pi) * b_freq * t)
        wave += np.float32(0.5 * self.noise) * rng.standard_normal((n, total), dtype=np.float32)
        wave[np.broadcast_to(t, wave.shape) >= d] = 0.0
        return wave, lengths

    def _texts(self, rng: np.random.Generator, keyword: np.ndarray, shape: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        ids = lambda words: np.array([self.vocab.stoi[w] for w in words], dtype=np.int64)  # noqa: E731
        filler, colours, shapes = ids(FILLER), ids(DISTRACTOR_COLOURS), ids(SHAPES)
        keywords = np.stack([ids(group) for group in KEYWORDS])
        n = len(keyword)
        names_shape = rng.random(n) < self.redundancy
        with_colour = rng.random(n) < 0.5
        num_filler = rng.integers(4, 9, n)
        synonym = rng.integers(0, keywords.shape[1], n)
        colour = rng.integers(0, len(colours), n)
        texts = []
        for i in range(n):
            words = rng.choice(filler, num_filler[i]).tolist()
            extra = [keywords[keyword[i], synonym[i]]]
            if names_shape[i]:
                extra.append(shapes[shape[i]])
            if with_colour[i]:
                extra.append(colours[colour[i]])
            for w in extra:
                words.insert(int(rng.integers(0, len(words) + 1)), int(w))
            texts.append(np.array(words, dtype=np.int64))
        return texts, names_shape

    # ------------------------------------------------------------------ dataset protocol

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        sample: dict = {"label": int(self.targets[i])}
        if self.keep[i, 0]:
            sample["visual"] = torch.from_numpy(self.images[i])
        if self.keep[i, 1]:
            sample["audio"] = torch.from_numpy(self.audio[i, : self.audio_lengths[i]])
        if self.keep[i, 2]:
            sample["text"] = torch.from_numpy(self.texts[i])
        return sample

    def text(self, i: int) -> str:
        """Sample ``i``'s sentence, for reading."""
        return self.vocab.decode(self.texts[i].tolist())

    def bayes_accuracy(self, modalities: tuple[str, ...] | list[str]) -> float:
        """Best achievable accuracy on this data from ``modalities`` alone, if each modality's
        attribute is read perfectly: predict the most frequent class given what is visible."""
        visible = []
        for m in modalities:
            if m not in MODALITIES:
                raise ValueError(f"synthetic: unknown modality {m!r}; choose from {MODALITIES}")
        if "visual" in modalities:
            visible.append(self.attributes[:, 0])
        if "audio" in modalities:
            visible.append(self.attributes[:, 1])
        if "text" in modalities:
            visible.append(self.attributes[:, 2])
            if "visual" not in modalities:  # the shape named in the text, -1 where it is not
                visible.append(np.where(self.names_shape, self.attributes[:, 0], -1))
        key = np.stack(visible, axis=1) if visible else np.zeros((self.n, 1), dtype=np.int64)
        _, group = np.unique(key, axis=0, return_inverse=True)
        group = group.reshape(-1)
        table = np.zeros((group.max() + 1, self.num_classes), dtype=np.int64)
        np.add.at(table, (group, self.labels), 1)
        return float(table.max(axis=1).sum() / self.n)
