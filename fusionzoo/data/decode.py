"""Reading one cell of a manifest: images, audio and feature vectors, and their transforms.

Legend: ``c`` channels, ``h`` height, ``w`` width, ``t`` audio samples, ``d`` features.

Each ``kind`` of column has a reader, configured by the modality's options in ``data.modalities``:

* ``image``: ``torchvision.io.decode_image`` (PNG, JPEG, WebP, GIF) to ``uint8 [c, h, w]`` with
  ``channels`` 1 or 3; then ``transforms.v2``: resize to ``size`` (or, in training with
  ``augment.crop``, a random resized crop), ``augment.flip`` (probability), ``augment.color_jitter``,
  ``augment.rotate`` (degrees), to float in [0, 1], and ``normalize`` (``{mean, std}`` or
  ``imagenet``). Augmentation is training-only; evaluation is deterministic. An image whose header
  declares more than ``max_pixels`` (default Pillow's limit, 89,478,485; null: none) is refused
  before it is decoded (:mod:`fusionzoo.data.image_header`).
* ``audio``: ``soundfile`` (WAV, FLAC, OGG) to float ``[t]``: channels averaged (mono downmix),
  resampled to ``sample_rate`` with ``torchaudio.functional.resample`` (``resample: false`` makes a
  different rate an error), ``normalize: peak`` (DC offset removed, peak scaled to 1), cut to
  ``max_seconds`` from the start (training with ``augment.crop``: a random window), and
  ``augment.gain_db`` (a uniform random gain within +-that many dB) in training. A clip over five
  minutes is refused at the start check unless ``max_seconds`` is set (its batch would pad to it).
* ``features``: a ``.npy`` or ``.safetensors`` file (one tensor, or ``key``) or numbers written in
  the cell (separated by spaces, commas or semicolons; a list in JSONL) to float ``[d]``; every
  value finite.

Every option is checked where it is read, nested ones too (``augment.crop.scale``, a probability
in [0, 1], ...). Errors are :class:`CellError` with a message that the manifest prefixes with file, line and column.

:class:`DiskCache` keeps decoded images and recordings (before the per-sample transform) as
safetensors files, keyed by the file's path, size and modification time and by the reader options
that change the decoding, so a changed file or option is decoded again and never read stale.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusionzoo.data.image_header import image_size
from fusionzoo.encoders.visual import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["CellError", "ImageReader", "AudioReader", "DiskCache", "read_features", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))


class CellError(ValueError):
    """A cell that cannot be read; the manifest adds where it is."""


def _options(options: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown option {unknown[0]!r} (allowed: {', '.join(allowed)})")


def _number(value: Any) -> bool:
    """A finite int or float (not a bool, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise CellError(f"file not found: {path}")
    return path


#: What an image or audio cell holds: a file's path, or the bytes of the encoded file (a Parquet
#: column, a Hugging Face ``Image`` / ``Audio`` feature).
Source = Path | bytes


def _name(source: Source) -> str:
    """A source as messages name it."""
    return str(source) if isinstance(source, Path) else f"(the cell's {len(source):,} bytes)"


def _opened(source: Source) -> Any:
    """A file object (or path string) soundfile and the header readers take."""
    return io.BytesIO(source) if isinstance(source, bytes) else str(_existing(source))


class ImageReader:
    """Decode and transform one image (see the module docstring)."""

    OPTIONS = ("size", "channels", "normalize", "augment", "max_pixels")
    AUGMENT = ("crop", "flip", "color_jitter", "rotate")
    #: Pillow's decompression-bomb limit: an image declaring more pixels is refused before decoding.
    MAX_PIXELS = 89_478_485

    def __init__(
        self, *, size: list[int] | int | None = None, channels: int = 3, normalize: Any = None, augment: Mapping | None = None,
        max_pixels: int | None = MAX_PIXELS, where: str = "image",
    ) -> None:
        from torchvision.io import ImageReadMode
        from torchvision.transforms import v2

        if max_pixels is not None and (not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1):
            raise ValueError(f"{where}.max_pixels: an int >= 1 or null (no limit), got {max_pixels!r}")
        self.max_pixels, self.where = max_pixels, where

        if channels not in (1, 3):
            raise ValueError(f"{where}.channels: 1 (grey) or 3 (RGB), got {channels!r}")
        self.mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        self.channels = channels
        self.cache_key = f"image:{channels}"
        augment = dict(augment or {})
        _options(augment, self.AUGMENT, f"{where}.augment")
        if isinstance(size, int):
            size = [size, size]
        if size is not None and (len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size)):
            raise ValueError(f"{where}.size: [height, width] in pixels, got {size!r}")
        self.size = None if size is None else list(size)
        mean_std = self._normalize(normalize, channels, where)
        self.normalized = mean_std is not None
        tail = [v2.ToDtype(torch.float32, scale=True)] + ([v2.Normalize(*mean_std)] if mean_std else [])
        resize = [v2.Resize(self.size, antialias=True)] if self.size else []
        self.eval_transform = v2.Compose(resize + tail)
        train: list = []
        crop = augment.get("crop")
        if crop:
            if self.size is None:
                raise ValueError(f"{where}.augment.crop: needs size (the crop's output)")
            if not isinstance(crop, (Mapping, bool)):
                raise ValueError(f"{where}.augment.crop: true or {{scale: [min, max]}}, got {crop!r}")
            _options(crop if isinstance(crop, Mapping) else {}, ("scale",), f"{where}.augment.crop")
            scale = crop.get("scale", (0.08, 1.0)) if isinstance(crop, Mapping) else (0.08, 1.0)
            if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(_number(v) for v in scale) and 0 < scale[0] <= scale[1] <= 1):
                raise ValueError(f"{where}.augment.crop.scale: [min, max] with 0 < min <= max <= 1 (fractions of the area), got {scale!r}")
            train.append(v2.RandomResizedCrop(self.size, scale=tuple(scale), antialias=True))
        else:
            train += resize
        flip, rotate = augment.get("flip", 0), augment.get("rotate", 0)
        if not (_number(flip) and 0 <= flip <= 1):
            raise ValueError(f"{where}.augment.flip: a probability in [0, 1], got {flip!r}")
        if not (_number(rotate) and 0 <= rotate <= 180):
            raise ValueError(f"{where}.augment.rotate: degrees in [0, 180], got {rotate!r}")
        if flip:
            train.append(v2.RandomHorizontalFlip(float(flip)))
        if rotate:
            train.append(v2.RandomRotation(float(rotate)))
        jitter = augment.get("color_jitter")
        if jitter:
            train.append(self._jitter(jitter, channels, f"{where}.augment.color_jitter"))
        self.train_transform = v2.Compose(train + tail)

    @staticmethod
    def _jitter(jitter: Any, channels: int, where: str) -> Any:
        from torchvision.transforms import v2

        if isinstance(jitter, Mapping):
            _options(jitter, ("brightness", "contrast", "saturation", "hue"), where)
            if not all(_number(v) and v >= 0 for v in jitter.values()) or jitter.get("hue", 0) > 0.5:
                raise ValueError(f"{where}: non-negative strengths (hue at most 0.5), got {dict(jitter)!r}")
            return v2.ColorJitter(**jitter)
        if not (_number(jitter) and jitter > 0):
            raise ValueError(f"{where}: a strength > 0 or {{brightness, contrast, saturation, hue}}, got {jitter!r}")
        return v2.ColorJitter(jitter, jitter, jitter if channels == 3 else 0)

    @staticmethod
    def _normalize(normalize: Any, channels: int, where: str) -> tuple[list[float], list[float]] | None:
        if normalize in (None, False, "none"):
            return None
        if normalize == "imagenet":
            mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
            if channels == 1:
                mean, std = [sum(mean) / 3], [sum(std) / 3]
            return mean, std
        if isinstance(normalize, Mapping) and set(normalize) == {"mean", "std"}:
            mean, std = [float(v) for v in normalize["mean"]], [float(v) for v in normalize["std"]]
            if len(mean) != channels or len(std) != channels or min(std) <= 0:
                raise ValueError(f"{where}.normalize: one mean and one positive std per channel ({channels}), got {normalize!r}")
            return mean, std
        raise ValueError(f"{where}.normalize: 'imagenet', none, or {{mean: [...], std: [...]}}, got {normalize!r}")

    def check(self, path: Source) -> None:
        """Cheap check at start: the file exists (or the cell holds bytes), starts like an image
        torchvision decodes, and its header declares at most ``max_pixels``."""
        if isinstance(path, bytes):
            head = path[:16]
        else:
            with _existing(path).open("rb") as f:
                head = f.read(16)
        if not (any(head.startswith(magic) for magic, _ in IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
            raise CellError(f"{_name(path)} is not a PNG, JPEG, WebP or GIF image (it starts with {head[:8]!r})")
        self._check_pixels(path)

    def _check_pixels(self, path: Source) -> None:
        """Refuse an image whose header declares more than ``max_pixels`` (before it is decoded)."""
        size = image_size(path) if self.max_pixels is not None else None
        if size is not None and size[0] * size[1] > self.max_pixels:
            raise CellError(
                f"image {_name(path)} declares {size[0]} x {size[1]} pixels ({size[0] * size[1]:,}), more than {self.where}.max_pixels "
                f"({self.max_pixels:,}): decoded it takes {size[0] * size[1] * self.channels / 2**30:.1f} GiB. "
                f"Raise max_pixels (null: no limit) if it is meant"
            )

    def decode(self, path: Source) -> Tensor:
        from torchvision.io import decode_image, read_file

        self._check_pixels(path if isinstance(path, bytes) else _existing(path))
        try:
            data = torch.frombuffer(bytearray(path), dtype=torch.uint8) if isinstance(path, bytes) else read_file(str(path))
            image = decode_image(data, mode=self.mode)
        except RuntimeError as e:
            raise CellError(f"cannot decode image {_name(path)}: {str(e).splitlines()[0]}") from None
        if image.dim() == 4:  # an animated GIF or WebP: [frames, c, h, w]
            raise CellError(f"image {_name(path)} is animated ({image.shape[0]} frames); give one still image (its first frame saved alone)")
        if image.shape[0] != self.channels:  # a decoder that ignores the mode (WebP): convert as the mode would have
            from torchvision.transforms.v2.functional import rgb_to_grayscale

            image = rgb_to_grayscale(image[:3]) if self.channels == 1 else image[:1].expand(3, -1, -1).clone() if image.shape[0] == 1 else image[:3]
        return image

    def transform(self, image: Tensor, train: bool) -> Tensor:
        return (self.train_transform if train else self.eval_transform)(image)


class AudioReader:
    """Decode and transform one recording (see the module docstring)."""

    OPTIONS = ("sample_rate", "resample", "max_seconds", "normalize", "augment")
    AUGMENT = ("crop", "gain_db")
    #: A clip longer than this is refused unless ``max_seconds`` says how much of it to keep.
    LONG_SECONDS = 300

    def __init__(
        self, *, sample_rate: int, resample: bool = True, max_seconds: float | None = None, normalize: str | None = None,
        augment: Mapping | None = None, where: str = "audio",
    ) -> None:
        if not isinstance(sample_rate, int) or sample_rate < 1:
            raise ValueError(f"{where}.sample_rate: a positive int (Hz), got {sample_rate!r}")
        if normalize not in (None, "none", "peak"):
            raise ValueError(f"{where}.normalize: 'peak' or none, got {normalize!r}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"{where}.max_seconds: positive, got {max_seconds!r}")
        augment = dict(augment or {})
        _options(augment, self.AUGMENT, f"{where}.augment")
        self.sample_rate, self.resample, self.peak, self.where = sample_rate, bool(resample), normalize == "peak", where
        self.max_samples = None if max_seconds is None else max(1, round(max_seconds * sample_rate))
        crop, gain = augment.get("crop", False), augment.get("gain_db", 0.0)
        if not isinstance(crop, bool):
            raise ValueError(f"{where}.augment.crop: true or false (a random max_seconds window in training), got {crop!r}")
        if not (_number(gain) and gain >= 0):
            raise ValueError(f"{where}.augment.gain_db: a gain range in dB (>= 0), got {gain!r}")
        self.crop, self.gain_db = crop, float(gain)
        self.cache_key = f"audio:{sample_rate}:{self.resample}:{self.peak}"

    def check(self, path: Source) -> None:
        """Cheap check at start: the header is readable, the rate acceptable, the file not empty."""
        import soundfile

        try:
            info = soundfile.info(_opened(path))
        except (RuntimeError, soundfile.LibsndfileError) as e:
            raise CellError(f"cannot read audio {_name(path)}: {e}") from None
        self._check_rate(info.samplerate, path)
        if info.frames == 0:
            raise CellError(f"audio {_name(path)} holds no samples")
        seconds = info.frames / info.samplerate
        if self.max_samples is None and seconds > self.LONG_SECONDS:
            raise CellError(
                f"audio {_name(path)} lasts {seconds:.0f} s and {self.where}.max_seconds is not set: its batch would be padded to "
                f"{round(seconds * self.sample_rate):,} samples per clip. Set max_seconds (longer clips are cut, explicitly)"
            )

    def _check_rate(self, rate: int, path: Source) -> None:
        if rate != self.sample_rate and not self.resample:
            raise CellError(f"audio {_name(path)} is sampled at {rate} Hz, expected {self.sample_rate} Hz (resample: false)")

    def decode(self, path: Source) -> Tensor:
        """Mono float32 ``[t]`` at ``sample_rate``, before the per-sample transform."""
        import soundfile
        import torchaudio.functional as AF

        try:
            x, rate = soundfile.read(_opened(path), dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as e:
            raise CellError(f"cannot read audio {_name(path)}: {e}") from None
        self._check_rate(rate, path)
        if x.shape[0] == 0:
            raise CellError(f"audio {_name(path)} holds no samples")
        wave = torch.from_numpy(x).mean(dim=1)
        if rate != self.sample_rate:
            wave = AF.resample(wave, rate, self.sample_rate)
        if not torch.isfinite(wave).all():
            raise CellError(f"audio {_name(path)} holds non-finite samples")
        if self.peak:
            wave = wave - wave.mean()
            wave = wave / wave.abs().max().clamp(min=1e-8)
        return wave.contiguous()

    def transform(self, wave: Tensor, train: bool) -> Tensor:
        n = self.max_samples
        if n is not None and wave.shape[0] > n:
            start = int(torch.randint(0, wave.shape[0] - n + 1, ())) if (train and self.crop) else 0
            wave = wave[start : start + n]
        if train and self.gain_db:
            gain_db = (torch.rand(()) * 2 - 1) * self.gain_db
            wave = wave * 10 ** (gain_db / 20)
        return wave


class DiskCache:
    """Decoded tensors in ``folder``, one safetensors file each, written atomically (safe with
    several ``DataLoader`` workers or processes: the last identical write wins)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.unwritable = False  # set at the first failed write (a full disk): decoding goes on uncached

    def _file(self, path: Source, reader: ImageReader | AudioReader) -> Path:
        if isinstance(path, bytes):  # a cell's own bytes: keyed by their content
            key = f"bytes:{hashlib.sha256(path).hexdigest()}|{reader.cache_key}"
        else:
            stat = _existing(path).stat()
            key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{reader.cache_key}"
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"

    def load(self, path: Source, reader: ImageReader | AudioReader) -> Tensor:
        from safetensors import SafetensorError
        from safetensors.torch import load_file, save_file

        file = self._file(path, reader)
        if file.is_file():
            try:
                return load_file(str(file))["x"]
            except (SafetensorError, OSError, KeyError):
                pass  # damaged (an interrupted disk): decode again and replace it
        tensor = reader.decode(path)
        if self.unwritable:
            return tensor
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".safetensors")
            os.close(fd)
            save_file({"x": tensor.contiguous()}, tmp)
            os.replace(tmp, file)
        except (OSError, SafetensorError) as e:  # a full or read-only disk: a cache is not worth failing for
            self.unwritable = True
            warnings.warn(f"data.cache: cannot write into {self.folder} ({e}); reading on without the cache", stacklevel=2)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        return tensor


_NUMBERS = re.compile(r"[\s,;]+")


def read_features(cell: Any, root: Path, key: str | None = None) -> Tensor:
    """A float32 ``[d]`` vector from a file path (``.npy``, ``.safetensors``), the bytes of an
    ``.npy`` file (a shard member) or inline numbers."""
    if isinstance(cell, bytes):
        if not cell.startswith(b"\x93NUMPY"):
            try:
                cell = cell.decode()  # numbers written as text
            except UnicodeDecodeError:
                raise CellError(f"expected the bytes of an .npy file or numbers as text, got {cell[:8]!r}...") from None
            return read_features(cell, root, key)
        return _finite(torch.from_numpy(_npy(cell).astype(np.float32)), _name(cell))
    if isinstance(cell, list):
        values = cell
    elif isinstance(cell, (int, float)) and not isinstance(cell, bool):
        values = [cell]
    elif isinstance(cell, str) and cell.strip().lower().endswith((".npy", ".safetensors")):
        return _features_file(root / cell.strip(), key)
    elif isinstance(cell, str):
        values = [v for v in _NUMBERS.split(cell.strip().strip("[]")) if v]
    else:
        raise CellError(f"expected numbers or a .npy/.safetensors path, got {type(cell).__name__}")
    try:
        vector = torch.tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError):
        bad = next(v for v in values if not _is_number(v))
        raise CellError(f"{bad!r} is not a number (features are numbers, or a .npy/.safetensors path)") from None
    return _finite(vector, "the cell")


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


#: The most values a feature file may declare (a vector of 16 M floats is 64 MB): a header asking for
#: more is refused before anything is allocated.
MAX_FEATURE_VALUES = 1 << 24


def _features_file(path: Path, key: str | None) -> Tensor:
    _existing(path)
    try:
        array = _npy(path) if path.suffix == ".npy" else _safetensors(path, key)
    except (OSError, ValueError) as e:
        if isinstance(e, CellError):
            raise
        raise CellError(f"cannot read features {path}: {str(e).splitlines()[0]}") from None
    return _finite(torch.from_numpy(array.astype(np.float32)), str(path))


def _check_vector(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """A 1-D vector of real numbers, of at most :data:`MAX_FEATURE_VALUES` (from the header)."""
    if np.issubdtype(dtype, np.complexfloating):
        raise CellError(f"{path}: complex values ({dtype}); features are real (take .real or .abs() explicitly)")
    if len(shape) != 1 or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise CellError(f"{path}: expected a 1-D numeric vector, got {dtype} of shape {list(shape)}")
    if shape[0] > MAX_FEATURE_VALUES:
        raise CellError(f"{path}: declares {shape[0]:,} values, more than a feature vector holds ({MAX_FEATURE_VALUES:,})")


def _npy(source: Source) -> np.ndarray:
    """A ``.npy`` file (or its bytes), its header checked before its data is read (an ``.npz``
    archive is named)."""
    path = _name(source)
    with (io.BytesIO(source) if isinstance(source, bytes) else source.open("rb")) as f:
        magic = f.read(6)
        if magic.startswith(b"PK"):
            raise CellError(f"{path} is an .npz archive, not an .npy array: save one array with numpy.save")
        if magic != b"\x93NUMPY":
            raise CellError(f"{path} is not an .npy file (it starts with {magic!r})")
        f.seek(0)
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
        _check_vector(path, shape, dtype)
        f.seek(0)
        return np.load(f, allow_pickle=False)


def _safetensors(path: Path, key: str | None) -> np.ndarray:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            names = sorted(f.keys())  # noqa: SIM118
            if key is None and len(names) != 1:
                raise CellError(f"{path} holds {names}; name one with the modality's key:")
            if key is not None and key not in names:
                raise CellError(f"{path} has no tensor {key!r} (it holds {names})")
            name = key if key is not None else names[0]
            view = f.get_slice(name)
            if view.get_dtype() in ("C64", "C128", "BOOL"):
                raise CellError(f"{path}: {name!r} holds {view.get_dtype()} values; features are real numbers")
            _check_vector(path, tuple(view.get_shape()), np.dtype(np.float32))
            return f.get_tensor(name)
    except SafetensorError as e:
        raise CellError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from None


def _finite(vector: Tensor, what: str) -> Tensor:
    if vector.numel() == 0:
        raise CellError(f"{what} holds no values")
    bad = (~torch.isfinite(vector)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise CellError(f"{what}: value {i} is {vector[i].item()}, features must be finite")
    return vector

