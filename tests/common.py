"""Shared by the tests: the avdigits copy (and a small copy of it), tiny configs, small manifest folders."""

import csv
import json
import os
import shutil
import wave
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from torchvision.io import write_png

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The shared copy sits beside the checkout (../shared); FUSIONZOO_AVDIGITS points elsewhere.
_CANDIDATES = [os.environ.get("FUSIONZOO_AVDIGITS", ""), ROOT.parent / "shared/datasets/avdigits", "/work/shared/datasets/avdigits"]
AVDIGITS = next((Path(c) for c in _CANDIDATES if c and (Path(c) / "manifest.csv").is_file()), Path(_CANDIDATES[1]))
needs_avdigits = pytest.mark.skipif(
    not (AVDIGITS / "manifest.csv").is_file(), reason=f"the avdigits data is not at {AVDIGITS}"
)

#: Small image and bag-of-words encoders for synthetic runs that take seconds.
VISUAL_TEXT = {
    "visual": {"name": "visual_cnn", "in_channels": 1, "channels": [4], "out_dim": 8},
    "text": {"name": "text_embedding", "vocab_size": 64, "embed_dim": 8, "out_dim": 8},
}


def mini_avdigits(tmp_path, n=6):
    """An avdigits folder with the first ``n`` test clips (MNIST copied); returns ``(root, rows)``."""
    root = tmp_path / "avd"
    (root / "audio").mkdir(parents=True)
    shutil.copytree(AVDIGITS / "mnist", root / "mnist")
    rows = [r for r in csv.DictReader((AVDIGITS / "manifest.csv").open()) if r["split"] == "test"][:n]
    write_manifest(root, rows)
    for r in rows:
        shutil.copy(AVDIGITS / r["audio_path"], root / r["audio_path"])
    return root, rows


def write_manifest(root, rows):
    with (Path(root) / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["audio_path", "digit", "speaker", "take", "split"])
        w.writeheader()
        w.writerows(rows)


def tiny_config(epochs=2, n=48, val_n=32, test_n=32, **train):
    """Visual + text classification on 8 synthetic classes, ``n`` / ``val_n`` / ``test_n`` samples."""
    return {
        "seed": 0,
        "data": {"name": "synthetic", "n": n, "val_n": val_n, "test_n": test_n, "num_classes": 8},
        "model": {
            "encoders": dict(VISUAL_TEXT),
            "fusion": {"name": "concat_mlp", "out_dim": 16, "hidden_dims": [16]},
            "head": {"name": "linear", "out_dim": 8},
        },
        "train": {"epochs": epochs, "batch_size": 16, "lr": 0.01, **train},
    }


def config_file(tmp_path, config, name="c.yaml"):
    path = Path(tmp_path) / name
    path.write_text(yaml.safe_dump(config))
    return path


def subprocess_env():
    """For ``fusionzoo`` child processes: no progress bar, one thread each."""
    return {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------- manifest folders

CLASSES = ["cat", "dog", "owl"]
WORDS = {"cat": "a small cat", "dog": "the big dog", "owl": "one owl at night"}


def write_wav(path, wave_f32, rate=8000, channels=1):
    data = (np.clip(wave_f32, -1, 1) * 32767).astype("<i2")
    if channels == 2:
        data = np.stack([data, data], axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())


def build_folder(tmp_path, n_per_class=6, blank_every=0, fmt="csv", rates=(8000,), extra_rows=()):
    """A manifest folder: PNG images, WAV audio, captions, inline and .npy features, a label and a
    split column. Class ``c`` is a brightness, a tone, a caption and a feature offset."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "wav").mkdir()
    (root / "npy").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    i = 0
    for c, name in enumerate(CLASSES):
        for k in range(n_per_class):
            split = ["train", "train", "train", "train", "val", "test"][k % 6]
            img = torch.full((1, 12, 12), 60 + 80 * c, dtype=torch.uint8) + torch.randint(0, 20, (1, 12, 12), dtype=torch.uint8)
            write_png(img, str(root / "img" / f"{i}.png"))
            rate = rates[i % len(rates)]
            t = np.arange(int(0.25 * rate)) / rate
            write_wav(root / "wav" / f"{i}.wav", 0.5 * np.sin(2 * np.pi * (300 + 400 * c) * t) + 0.05 * rng.standard_normal(len(t)), rate)
            feats = (np.eye(3)[c] + 0.1 * rng.standard_normal(3)).astype(np.float32)
            if i % 4 == 3:
                save_file({"features": feats}, str(root / "npy" / f"{i}.safetensors"))
                feat_cell = f"npy/{i}.safetensors"
            elif i % 2:
                np.save(root / "npy" / f"{i}.npy", feats)
                feat_cell = f"npy/{i}.npy"
            else:
                feat_cell = " ".join(f"{v:.4f}" for v in feats)
            row = {"image": f"img/{i}.png", "audio": f"wav/{i}.wav", "caption": WORDS[name], "feats": feat_cell, "label": name, "split": split, "score": str(c + 0.5 * rng.random())}
            if blank_every and i % blank_every == 1:
                row[["image", "audio", "caption", "feats"][(i // blank_every) % 4]] = ""
            rows.append(row)
            i += 1
    rows += list(extra_rows)
    write_rows(root / f"items.{fmt}", rows)
    return root, rows


def write_rows(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({k: (v if v != "" else None) for k, v in r.items()}) + "\n" for r in rows))
        return
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


MODALITIES = {
    "visual": {"column": "image", "kind": "image", "channels": 1, "size": [16, 16]},
    "audio": {"column": "audio", "kind": "audio", "sample_rate": 8000, "max_seconds": 0.25},
    "text": {"column": "caption", "kind": "text"},
    "extra": {"column": "feats", "kind": "features"},
}


def model_section(out_dim=3):
    """A small model for build_folder's four columns (image, audio, caption, features)."""
    return {
        "encoders": {
            "visual": {"name": "visual_cnn", "in_channels": 1, "channels": [4], "out_dim": 8},
            "audio": {"name": "audio_spec_cnn", "sample_rate": 8000, "n_fft": 128, "hop_length": 64, "n_mels": 16, "channels": [4], "out_dim": 8},
            "text": {"name": "text_embedding", "vocab_size": 32, "embed_dim": 8, "out_dim": 8},
            "extra": {"name": "feature_mlp", "in_dim": 3, "out_dim": 8},
        },
        "fusion": {"name": "concat_mlp", "out_dim": 16},
        "head": {"name": "linear", "out_dim": out_dim},
    }


def data_section(root, fmt="csv", **kw):
    return {"name": "manifest", "path": str(root / f"items.{fmt}"), "modalities": MODALITIES, "label": {"column": "label"}, **kw}
