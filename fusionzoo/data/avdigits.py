"""``avdigits``: spoken digits (FSDD, 8 kHz) paired with handwritten digits (MNIST), AV-MNIST style.

The folder layout, split and pairing rule are those of ``shared/datasets/avdigits/README.md``:

* ``manifest.csv`` (``audio_path,digit,speaker,take,split``), ``audio/*.wav``, ``mnist/*.gz``,
  optionally ``checksums.sha256``;
* test = speaker ``jackson`` (an unseen speaker), train = the other five; audio ``train`` pairs
  with MNIST ``train`` images, audio ``test`` with ``t10k``;
* validation measures what the test measures, an unseen speaker: ``split="val"`` is one speaker of
  the manifest's training rows (``val_speaker``, default ``theo``, 500 clips), and ``split="train"``
  is the other four (2000 clips). Pairs are made on the manifest's whole training split first, so a
  clip keeps its image whichever speaker is held out;
* for each split and digit, clips sorted by ``(speaker, int(take))``; clip ``k`` pairs with image
  ``imgs[(k + epoch * len(clips)) % len(imgs)]``, ``imgs`` the ascending indices of that digit.

Audio is read with the standard library ``wave`` module (16-bit PCM, mono, 8 kHz checked), the DC
offset removed and each clip peak-normalised (one speaker is recorded 5-22 dB quieter, another has
a DC offset), then cropped to ``clip_seconds`` from its start; a sample returns the clip at its true
length and :func:`~fusionzoo.data.collate.collate` pads it and records ``audio_lengths``.

``folds: {k: 6, fold: F}`` gives leave-one-speaker-out cross-validation instead
(:mod:`fusionzoo.data.folds`): the six speakers' clips (the manifest's train and test rows, each
paired as above), fold ``F`` testing the ``F``-th speaker in sorted order and validating on the
next, the other four training (``val_speaker`` does not apply).

``difficulty="hard"`` follows AV-MNIST: images keep only the principal components that carry 25%
of the energy (PCA fitted on the paired images of ``split="train"``, the validation speaker left
out; with folds, on the fold's training speakers), and audio is mixed with white
noise at ``snr_db`` (default 0 dB, seeded per clip).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import struct
import urllib.error
import urllib.request
import wave
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fusionzoo.atomic import write_bytes_atomic
from fusionzoo.data.folds import check_folds, fold_splits
from fusionzoo.data.sampling import first_per_class, hide_labels
from fusionzoo.registry import DATASETS

__all__ = ["AVDigits", "SPLITS", "read_idx", "read_wav", "pair_indices", "verify_checksums", "download_avdigits"]

DEFAULT_ROOT = "../shared/datasets/avdigits"
SAMPLE_RATE = 8000
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# MD5 of the decompressed originals (the values public MNIST loaders check).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{FSDD_COMMIT}.zip"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/{}"
TEST_SPEAKER = "jackson"
VAL_SPEAKER = "theo"
SPLITS = ("train", "val", "test")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MANIFEST_COLUMNS = ["audio_path", "digit", "speaker", "take", "split"]


def read_idx(path: str | Path) -> np.ndarray:
    """An MNIST idx file (gzip-compressed) as a uint8 array."""
    path = Path(path)
    try:
        data = gzip.open(path).read()
        (magic,) = struct.unpack(">I", data[:4])
        ndim = magic & 0xFF
        dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        body = np.frombuffer(data[4 + 4 * ndim :], np.uint8)
        if magic >> 8 != 0x08 or body.size != int(np.prod(dims)):
            raise ValueError(f"expected {int(np.prod(dims))} uint8 values, found {body.size}")
    except (OSError, EOFError, struct.error, ValueError, zlib.error) as e:
        raise ValueError(f"avdigits: {path} is not a valid gzip-compressed MNIST idx file: {e}") from None
    return body.reshape(dims)


def read_wav(path: str | Path) -> np.ndarray:
    """A 16-bit PCM mono 8 kHz wav as float32 in [-1, 1]; anything else raises naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"avdigits: audio file not found: {path}")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise ValueError(f"avdigits: {path} is not a readable PCM wav file: {e}") from None
    if (channels, width, rate) != (1, 2, SAMPLE_RATE):
        raise ValueError(
            f"avdigits: {path}: expected mono 16-bit PCM at {SAMPLE_RATE} Hz, "
            f"got {channels} channel(s), {8 * width}-bit, {rate} Hz"
        )
    if len(raw) != 2 * frames or frames == 0:
        raise ValueError(f"avdigits: {path} is truncated: header says {frames} frames, found {len(raw) // 2}")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def _pca(images: np.ndarray, train: np.ndarray, energy: float) -> np.ndarray:
    """``images`` projected onto the principal components of ``train`` that carry ``energy``."""
    x = torch.from_numpy(train.reshape(len(train), -1)).double()
    mean = x.mean(dim=0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    share = (s**2).cumsum(0) / (s**2).sum()
    basis = vh[: int((share < energy).sum()) + 1]
    flat = torch.from_numpy(images.reshape(len(images), -1)).double() - mean
    return ((flat @ basis.T @ basis + mean).reshape(images.shape)).float().numpy()


def pair_indices(rows: list[dict], labels: np.ndarray, epoch: int = 0) -> np.ndarray:
    """MNIST index for each manifest row of one split, by the README's rule (rows keep their order)."""
    out = np.empty(len(rows), dtype=np.int64)
    for d in range(10):
        clips = sorted((i for i, r in enumerate(rows) if int(r["digit"]) == d), key=lambda i: (rows[i]["speaker"], int(rows[i]["take"])))
        imgs = np.flatnonzero(labels == d)
        for k, i in enumerate(clips):
            out[i] = imgs[(k + epoch * len(clips)) % len(imgs)]
    return out


def verify_checksums(root: str | Path) -> int:
    """Check every file listed in ``root/checksums.sha256``; returns how many were checked."""
    root = Path(root)
    listing = root / "checksums.sha256"
    if not listing.is_file():
        raise FileNotFoundError(f"avdigits: no checksums file at {listing}")
    n = 0
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64 or any(c not in "0123456789abcdef" for c in parts[0].lower()):
            raise ValueError(f"avdigits: {listing}: line {number}: expected '<64 hex digits>  <file>', got {line!r}")
        expected, name = parts
        path = root / name.lstrip("*")
        if not path.is_file():
            raise FileNotFoundError(f"avdigits: {path} is listed in checksums.sha256 but missing")
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != expected:
            raise ValueError(f"avdigits: checksum mismatch for {path}: expected sha256 {expected}, got {got}")
        n += 1
    return n


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - fixed https URLs
            return response.read()
    except (urllib.error.URLError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"avdigits: could not download {url} ({reason}); on an offline machine copy the folder and pass root=") from None


def download_avdigits(root: str | Path, fetch: Callable[[str], bytes] = _fetch) -> None:
    """Fetch FSDD's recordings (the pinned commit's archive) and the four MNIST idx files, verify
    MNIST against the published MD5s and the recordings' format, and write ``manifest.csv``.
    Every file is written atomically; existing files are kept."""
    root = Path(root)
    for name, md5 in MNIST_MD5.items():
        path = root / "mnist" / name
        if path.is_file():
            continue
        data = fetch(MNIST_URL.format(name))
        got = hashlib.md5(gzip.decompress(data)).hexdigest()  # noqa: S324 - a checksum, not security
        if got != md5:
            raise ValueError(f"avdigits: downloaded {name} has MD5 {got} after decompression, expected {md5}")
        write_bytes_atomic(path, data)
    audio = root / "audio"
    if not audio.is_dir() or len(list(audio.glob("*.wav"))) < 3000:
        archive = zipfile.ZipFile(io.BytesIO(fetch(FSDD_URL)))
        members = [m for m in archive.namelist() if "/recordings/" in m and m.endswith(".wav")]
        if len(members) != 3000:
            raise ValueError(f"avdigits: the FSDD archive holds {len(members)} recordings, expected 3000")
        for member in members:
            target = audio / Path(member).name
            if not target.is_file():
                write_bytes_atomic(target, archive.read(member))
    rows = []
    for path in sorted(audio.glob("*.wav")):
        read_wav(path)  # format check
        digit, speaker, take = path.stem.split("_")
        rows.append([f"audio/{path.name}", digit, speaker, take, "test" if speaker == TEST_SPEAKER else "train"])
    rows.sort(key=lambda r: (int(r[1]), r[2], int(r[3])))
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([MANIFEST_COLUMNS, *rows])
    write_bytes_atomic(root / "manifest.csv", text.getvalue().encode())


_CACHE: dict[tuple, dict] = {}


def _load_split(root: Path, split: str, clip_samples: int) -> dict:
    """Decode one split once per process: clean audio, lengths, digits, MNIST labels and images."""
    key = (str(root.resolve()), split, clip_samples)
    if key in _CACHE:
        return _CACHE[key]
    with (root / "manifest.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != MANIFEST_COLUMNS:
            raise ValueError(f"avdigits: {root / 'manifest.csv'} has columns {reader.fieldnames}, expected {MANIFEST_COLUMNS}")
        rows = [r for r in reader if r["split"] == split]
    if not rows:
        raise ValueError(f"avdigits: {root / 'manifest.csv'} has no rows with split == {split!r}")
    for r in rows:
        if r["digit"] not in tuple("0123456789"):
            raise ValueError(f"avdigits: {root / 'manifest.csv'}: row of {r['audio_path']}: digit must be 0-9, got {r['digit']!r}")
    audio = np.zeros((len(rows), clip_samples), dtype=np.float32)
    lengths = np.zeros(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        x = read_wav(root / r["audio_path"])
        x = x - x.mean()
        x = x / max(float(np.abs(x).max()), 1e-8)
        n = min(len(x), clip_samples)
        audio[i, :n], lengths[i] = x[:n], n
    images_file, labels_file = MNIST_FILES[split]
    data = {
        "rows": rows,
        "audio": audio,
        "lengths": lengths,
        "digits": np.array([int(r["digit"]) for r in rows]),
        "mnist_labels": read_idx(root / "mnist" / labels_file),
        "mnist_images": read_idx(root / "mnist" / images_file),
    }
    _CACHE[key] = data
    return data


@DATASETS.register(
    "avdigits",
    paper="https://arxiv.org/abs/1808.07275",
    tags=("real", "audio-visual"),
)
class AVDigits(Dataset):
    """Spoken digits paired with MNIST images, speaker-held-out (see module docstring).

    Samples: ``{"visual": float [1, 28, 28] (standardised with MNIST's mean and std; in [0, 1] with
    ``normalize=False``), "audio": float [t] (t <= clip length), "label": int}``. ``root`` defaults to ``$FUSIONZOO_AVDIGITS``, else ``../shared/datasets/avdigits``.
    """

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        split: str = "train",
        download: bool = False,
        difficulty: str = "clean",
        pairing_epoch: int = 0,
        clip_seconds: float = 1.0,
        snr_db: float = 0.0,
        pca_energy: float = 0.25,
        seed: int = 0,
        labels_per_class: int | None = None,
        labelled_per_class: int | None = None,
        val_speaker: str = VAL_SPEAKER,
        normalize: bool = True,
        folds: Mapping[str, Any] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"avdigits: split must be one of {SPLITS}, got {split!r}")
        if difficulty not in ("clean", "hard"):
            raise ValueError(f"avdigits: difficulty must be 'clean' or 'hard', got {difficulty!r}")
        self.root = Path(root if root is not None else os.environ.get("FUSIONZOO_AVDIGITS", DEFAULT_ROOT))
        if download:
            download_avdigits(self.root)
        self._check_files(["train", "test"] if folds is not None else ["test" if split == "test" else "train"])
        self.split, self.difficulty, self.val_speaker = split, difficulty, val_speaker
        self.modalities = ("audio", "visual")
        self.sample_rates = {"audio": SAMPLE_RATE}
        clip = int(round(clip_seconds * SAMPLE_RATE))
        if folds is None:
            data = self._pool(["test" if split == "test" else "train"], clip, pairing_epoch)
            if split != "test" and val_speaker not in {r["speaker"] for r in data["rows"]}:
                speakers = sorted({r["speaker"] for r in data["rows"]})
                raise ValueError(f"avdigits: val_speaker {val_speaker!r} is not a training speaker; choose one of {speakers}")
            index = self._split_rows(data["rows"], split, val_speaker)
        else:
            data = self._pool(["train", "test"], clip, pairing_epoch)  # all six speakers, each clip with its own image
            splits = self._fold_splits(data["rows"], check_folds(folds, "avdigits: folds"))
            index, train_index = np.flatnonzero(splits == split), np.flatnonzero(splits == "train")
        images, audio, mnist_index = data["images"], data["audio"], data["mnist_index"]
        if difficulty == "hard":
            train = images[train_index] if folds is not None else self._training_images(data, clip, pairing_epoch)
            images = _pca(images, train, pca_energy)
            audio = self._noisy(audio, data["lengths"], snr_db, seed)
        self.rows = [data["rows"][i] for i in index]
        self.labels, self.mnist_index, self.lengths = data["digits"][index], mnist_index[index], data["lengths"][index]
        self.standardized = ("visual",) if normalize else ()
        self.images = (((images[index] - MNIST_MEAN) / MNIST_STD) if normalize else images[index])[:, None].astype(np.float32)
        self.audio = audio[index]
        if labels_per_class is not None and split == "train":
            index = first_per_class(self.labels, labels_per_class)
            self.rows = [self.rows[i] for i in index]
            self.labels, self.mnist_index, self.lengths = self.labels[index], self.mnist_index[index], self.lengths[index]
            self.images, self.audio = self.images[index], self.audio[index]
        self.targets = self.labels.copy()
        if labelled_per_class is not None and split == "train":
            self.targets = hide_labels(self.labels, labelled_per_class)

    def _check_files(self, splits: list[str]) -> None:
        """The manifest and the MNIST files of the manifest ``splits`` read are there."""
        needed = [self.root / "manifest.csv", *(self.root / "mnist" / f for s in splits for f in MNIST_FILES[s])]
        for path in needed:
            if not path.is_file():
                raise FileNotFoundError(
                    f"avdigits: {path} not found. Put the avdigits folder (manifest.csv, audio/, mnist/; "
                    f"see its README) at {self.root}, set FUSIONZOO_AVDIGITS, or pass download=True on a "
                    "machine that is online."
                )

    @staticmethod
    def _split_rows(rows: list[dict], split: str, val_speaker: str) -> np.ndarray:
        """Indices of ``split``'s rows among the manifest split they come from (train and val share one)."""
        if split == "test":
            return np.arange(len(rows))
        return np.array([i for i, r in enumerate(rows) if (r["speaker"] == val_speaker) == (split == "val")], dtype=np.int64)

    def _pool(self, splits: list[str], clip: int, epoch: int) -> dict:
        """The clips of the manifest's ``splits`` with their paired images (each split paired by
        the README's rule on its own), concatenated in that order."""
        parts = []
        for name in splits:
            data = _load_split(self.root, name, clip)
            mnist_index = pair_indices(data["rows"], data["mnist_labels"], epoch)
            if not np.array_equal(data["mnist_labels"][mnist_index], data["digits"]):
                raise ValueError("avdigits: paired MNIST labels disagree with the audio digits")
            images = data["mnist_images"][mnist_index].astype(np.float32) / 255.0
            parts.append({"rows": data["rows"], "digits": data["digits"], "mnist_index": mnist_index, "images": images,
                          "audio": data["audio"], "lengths": data["lengths"]})
        if len(parts) == 1:
            return parts[0]
        return {k: sum((p[k] for p in parts), []) if k == "rows" else np.concatenate([p[k] for p in parts]) for k in parts[0]}

    @staticmethod
    def _fold_splits(rows: list[dict], folds: dict) -> np.ndarray:
        """Leave-one-speaker-out: fold ``F`` tests the ``F``-th speaker (sorted), validates on the next."""
        speakers = sorted({r["speaker"] for r in rows})
        if folds["k"] != len(speakers):
            raise ValueError(f"avdigits: folds are by speaker (leave-one-speaker-out): k must be {len(speakers)}, got {folds['k']}")
        fold_of = np.array([speakers.index(r["speaker"]) for r in rows])
        return np.array(fold_splits(fold_of, folds["k"], folds["fold"]))

    def _training_images(self, data: dict, clip: int, epoch: int) -> np.ndarray:
        """The paired images of ``split="train"`` (the validation speaker left out), for the PCA."""
        train = self._pool(["train"], clip, epoch) if self.split == "test" else data
        return train["images"][self._split_rows(train["rows"], "train", self.val_speaker)]

    @staticmethod
    def _noisy(audio: np.ndarray, lengths: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(audio.shape, dtype=np.float32)
        valid = np.arange(audio.shape[1])[None] < lengths[:, None]
        power = (audio**2 * valid).sum(1) / np.maximum(lengths, 1)
        scale = np.sqrt(power / 10 ** (snr_db / 10))[:, None].astype(np.float32)
        return np.where(valid, audio + scale * noise, 0.0).astype(np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {
            "visual": torch.from_numpy(self.images[i]),
            "audio": torch.from_numpy(self.audio[i, : self.lengths[i]]),
            "label": int(self.targets[i]),
        }
