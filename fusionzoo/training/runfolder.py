"""A run folder has one writer, is recognisable, and is only replaced when it is one of ours.

* **One writer**: :func:`claim` takes an exclusive ``fcntl.flock`` on ``RUN/.lock`` for as long as
  training runs (the lock file records the holder's PID); a second ``train`` on the same folder
  fails at once naming that PID. The kernel drops the lock when the process dies, so a killed run
  never blocks its ``--resume``.
* **Recognisable**: a folder fusionzoo trains into holds the marker ``.fusionzoo-run``. Training
  into an existing folder that is neither empty nor a run folder (``--run-dir .``, a data folder)
  is refused, so nothing of the user's is overwritten.
* **Replace last**: ``--overwrite`` deletes the previous run's files only after the new config,
  datasets and model have been built, and only the files a run writes.
* **Resume what was trained**: ``--resume`` compares the config with the run's ``config.yaml``;
  a difference outside :data:`RESUMABLE` (``train.epochs`` to extend a run, and settings that do
  not change the result) is an error listing every difference.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fusionzoo.errors import ConfigError, RunFolderError

__all__ = ["claim", "claim_output", "is_run_folder", "check_folder", "clear_run", "stash_run", "restore_stash", "drop_stash", "config_changes", "check_resume_config", "MARKER", "RESUMABLE"]

MARKER = ".fusionzoo-run"
LOCK = ".lock"
RUN_FILES = (
    "checkpoints", "eval", "metrics.json", "log.jsonl", "curves.png", "init_report.txt", "config.yaml", "data_state.json", "data_report.json",
    "data_fingerprint.json", "test_predictions.safetensors", "encoders", "encoders.yaml", "explain", "ensemble", "features",
    "tensorboard", "mlflow.json", "data.parquet",
)
RESUMABLE = (
    "name", "description", "train.epochs", "train.progress", "train.num_workers", "train.keep_checkpoints", "train.device",
    "data.cache", "data.cache_dir", "train.loggers", "train.log_every", "tune",
)


def is_run_folder(path: Path) -> bool:
    """A fusionzoo run folder: the marker, or (written before it existed) a config and checkpoints."""
    path = Path(path)
    return (path / MARKER).is_file() or ((path / "config.yaml").is_file() and (path / "checkpoints").is_dir())


def check_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that holds something else, or a run without ``--resume`` / ``--overwrite``."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is a file, not a run folder")
    if not is_run_folder(run_dir):
        if any(p.name not in (LOCK,) for p in run_dir.iterdir()):
            raise RunFolderError(f"{run_dir} is not empty and not a fusionzoo run folder; choose an empty or new --run-dir")
        return
    if not resume and not overwrite and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it or --overwrite to replace it")


@contextmanager
def claim(run_dir: Path, marker: bool = True) -> Iterator[None]:
    """Hold the folder's lock (creating the folder, and the run marker when ``marker``) for the
    ``with`` block. ``fusionzoo compare`` holds its output folder this way (without the marker)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderError(f"{run_dir} is in use by another fusionzoo process (PID {holder}); wait for it or choose another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if marker:
            (run_dir / MARKER).touch()
        yield
    finally:
        os.close(fd)  # closing releases the lock


#: Marks a folder that fusionzoo's tools write their results into (``--out``) outside a run folder.
OUTPUT_MARKER = ".fusionzoo-output"


def claim_output(out: str | Path, names: Iterable[str], what: str, known: bool = False) -> Path:
    """Before a tool writes ``names`` into ``out``: refuse when one of them is there already and the
    folder is not fusionzoo's (neither marked by an earlier write nor inside a run folder, nor
    ``known`` to the caller by its content), so a user's file is never overwritten; then mark it.
    Returns ``out``."""
    out = Path(out)
    clashing = sorted(n for n in names if (out / n).exists() or (out / n).is_symlink())
    ours = known or any((d / OUTPUT_MARKER).is_file() or (d / MARKER).is_file() for d in (out, *out.parents))
    if clashing and not ours:
        raise FileExistsError(f"{what}: {out} holds {', '.join(clashing)}, which {what} did not write: give another --out (or move them)")
    if not ours:  # (inside a run folder the writers make the folder when they write)
        out.mkdir(parents=True, exist_ok=True)
        (out / OUTPUT_MARKER).touch()
    return out


def clear_run(run_dir: Path) -> None:
    """Delete the files a previous run wrote, nothing else (a symlink is removed, not what it points to)."""
    for name in RUN_FILES:
        _remove(Path(run_dir) / name)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


#: Where ``--overwrite`` keeps the previous run until the new one has its first checkpoint.
PREVIOUS = ".previous-run"


def stash_run(run_dir: Path) -> Path:
    """``--overwrite``: move the previous run's files aside (into ``RUN/.previous-run/``), to be
    dropped once the new run has saved its first checkpoint (:func:`drop_stash`) or put back if it
    fails before (:func:`restore_stash`); returns the stash."""
    stash = Path(run_dir) / PREVIOUS
    _remove(stash)  # one left by a run killed before its first checkpoint: the older run is gone already
    stash.mkdir()
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_symlink() or path.exists():
            os.replace(path, stash / name)
    return stash


def restore_stash(run_dir: Path, stash: Path) -> None:
    """Put the previous run back: the failed new run's files are removed first."""
    clear_run(run_dir)
    for path in stash.iterdir():
        os.replace(path, Path(run_dir) / path.name)
    stash.rmdir()


def drop_stash(stash: Path | None) -> None:
    if stash is not None:
        _remove(stash)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The differences between a run's saved config and the one it is resumed with, outside
    :data:`RESUMABLE`, one line each."""
    a, b = _flatten(saved), _flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE or key.partition(".")[0] in RESUMABLE or a.get(key) == b.get(key):  # "tune": the whole section
            continue
        lines.append(f"{key}: the run has {a.get(key, '(unset)')!r}, now {b.get(key, '(unset)')!r}")
    return lines


def check_resume_config(saved: Mapping[str, Any], new: Mapping[str, Any], run_dir: Path) -> None:
    changes = config_changes(saved, new)
    if changes:
        raise ConfigError(
            f"{Path(run_dir) / 'config.yaml'}: --resume with a different config; "
            + "; ".join(changes)
            + f" (only {', '.join(RESUMABLE)} may change; start a new --run-dir for the rest)"
        )
