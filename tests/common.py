"""Shared by the tests: the avdigits copy (and a small copy of it) and tiny configs."""

import csv
import os
import shutil
from pathlib import Path

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
