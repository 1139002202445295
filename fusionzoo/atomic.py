"""Atomic file writes: a temporary file in the same folder, fsync, then rename over the target.

A reader sees the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["write_bytes_atomic", "write_text_atomic", "write_json_atomic", "strict_json", "atomic_path", "atomic_folder", "pyplot", "save_figure_atomic"]


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read
        os.replace(tmp, path)
    except OSError as e:  # a full disk while writing carries no file name: give it the target's
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def strict_json(obj: Any, indent: int | None = None) -> str:
    """``obj`` as standard JSON: NaN and infinities (undefined metrics) become ``null``, never the
    bare ``NaN`` that strict parsers (``jq``, browsers, other languages) refuse."""
    return json.dumps(_finite_or_none(obj), indent=indent, allow_nan=False)


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """:func:`strict_json` of ``obj``, written atomically."""
    write_text_atomic(path, strict_json(obj, indent))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """For writers that take a file name (``torch.export.save``, ``savefig``): a temporary path
    beside ``path``, ending in the same suffix (some writers go by it), renamed over ``path`` when
    the block succeeds and removed when it fails.

    Example::

        with atomic_path("model.pt2") as tmp:
            torch.export.save(program, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """For writers of several files (``save_pretrained``): an empty temporary folder beside ``path``
    that replaces ``path`` (and whatever it held) when the block succeeds, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or None without matplotlib (the
    ``bench`` extra): plots are optional everywhere."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure_atomic(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
