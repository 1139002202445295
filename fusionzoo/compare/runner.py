"""Running a grid: every cell and seed as its own ``fusionzoo train --evaluate`` process.

A run whose ``eval/results.json`` exists and whose saved config is the one its cell makes now is
finished and skipped; any other is started with ``--resume`` (an interrupted run continues from its last checkpoint, a new one starts from scratch).
A :class:`~fusionzoo.launch.Launcher` runs them: ``jobs`` local processes at a time, each with
``cpu_count // jobs`` threads (the default), Ray tasks or Slurm jobs; each is the same
``fusionzoo train`` process on a resumable run folder. A process that fails is recorded with the
last line of its log (``cells/<cell>/seed-<k>.log``) and the grid goes on.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from fusionzoo.atomic import write_text_atomic
from fusionzoo.compare.grid import Cell, Replicate, as_replicate
from fusionzoo.config import load_config
from fusionzoo.launch import Launcher, run_logged
from fusionzoo.training.loggers import EXPERIMENT_ENV, RUN_NAME_ENV, TAGS_ENV

__all__ = ["run_grid", "is_finished", "die_with_parent"]


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "metrics.json").is_file() and (Path(run_dir) / "eval" / "results.json").is_file()


#: Set in a cell's environment to the grid's PID: the child dies with it (see :func:`die_with_parent`).
PARENT_ENV = "FUSIONZOO_DIE_WITH_PARENT"


def die_with_parent() -> None:
    """In a cell's ``fusionzoo train`` process: ask the kernel for SIGTERM when the grid that
    started it dies (Linux ``prctl(PR_SET_PDEATHSIG)``), so a killed ``compare`` leaves no orphan
    holding a run folder; exits at once if the grid is gone already. Nothing elsewhere."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # the grid died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _command(config: str | Path, cell: Cell, replicate: Replicate, run_dir: Path) -> list[str]:
    sets = [arg for o in (*cell.overrides, *replicate.overrides) for arg in ("--set", o)]
    return [sys.executable, "-m", "fusionzoo", "train", str(config), "--run-dir", str(run_dir), "--resume", "--evaluate", *sets]


def _same_config(config: str | Path, cell: Cell, replicate: Replicate | int, run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` was trained with the config this cell and replicate make now."""
    overrides = [*cell.overrides, *as_replicate(replicate).overrides]
    wanted = yaml.safe_load(yaml.safe_dump(load_config(config, overrides).to_dict(), sort_keys=False))
    return yaml.safe_load((run_dir / "config.yaml").read_text()) == wanted


def _run_one(config: str | Path, cell: Cell, replicate: Replicate, out: Path, threads: int, cwd: str | None = None) -> dict[str, Any]:
    """One replicate of a cell, in whatever process the launcher runs it: paths are the grid's,
    relative to ``cwd`` (the grid's working folder), where its ``fusionzoo train`` runs too."""
    run_dir = cell.run_dir(out, replicate)
    here = Path(cwd or ".")
    done = {"seed": replicate.seed, "fold": replicate.fold, "replicate": replicate.path, "status": "done"}
    if is_finished(here / run_dir) and _same_config(here / config, cell, replicate, here / run_dir):
        return done | {"reused": True}
    # not finished, or finished with another config: --resume continues it where only resumable keys
    # changed (train.epochs) and refuses the rest, naming them, in the cell's log and status
    shown = run_dir.parent / f"{run_dir.name}.log"
    env = {PARENT_ENV: str(os.getpid()),
           # train.loggers: the grid is one MLflow experiment, each replicate a run named by its folder
           EXPERIMENT_ENV: (here / out).resolve().name, RUN_NAME_ENV: f"{cell.name}/{replicate.path}",
           TAGS_ENV: json.dumps({"cell": cell.name, "seed": replicate.seed, "fold": replicate.fold})}
    code, last = run_logged(_command(config, cell, replicate, run_dir), here / shown, here, threads, env)
    if code == 0 and is_finished(here / run_dir):
        return done | {"reused": False}
    return done | {"status": "failed", "reason": f"exit {code}: {last} (log: {shown})"}


def run_grid(
    config: str | Path,
    cells: Sequence[Cell],
    seeds: Sequence[int | Replicate],
    out: str | Path,
    jobs: int = 1,
    say: Callable[[str], None] = print,
    launcher: Launcher | None = None,
) -> dict[str, dict[str, Any]]:
    """Train and evaluate every (cell, replicate: a seed, or a fold and seed); returns ``{cell:
    {status, fusion, reason, notes, seeds}}`` (``seeds`` keyed by the replicate's folder) and writes
    it to ``OUT/grid.json``. ``launcher`` runs them (default: ``jobs`` local processes at a time)."""
    out = Path(out)
    launcher = launcher or Launcher("local", jobs=jobs)
    todo = [(c, as_replicate(s)) for c in cells if c.skipped is None for s in seeds]
    statuses: dict[str, dict[str, Any]] = {
        c.name: {"fusion": c.fusion, "overrides": list(c.overrides), "notes": c.notes, "status": "skipped" if c.skipped else "done",
                 "reason": c.skipped or "", "seeds": {}}
        for c in cells
    }
    for c in cells:
        if c.skipped:
            say(f"skip {c.name}: {c.skipped}")

    def lost(item: tuple, error: BaseException) -> dict[str, Any]:  # the task itself died (a node, a Slurm limit)
        replicate = item[2]
        return {"seed": replicate.seed, "fold": replicate.fold, "replicate": replicate.path, "status": "failed", "reason": launcher.failure(error)}

    items = [(config, cell, replicate, out, launcher.cpus_per_task, os.getcwd()) for cell, replicate in todo]
    for n, (i, result) in enumerate(launcher.map(_run_one, items, lost), 1):
        cell = todo[i][0]
        statuses[cell.name]["seeds"][result["replicate"]] = result
        what = "finished earlier" if result.get("reused") else result["status"]
        which = result["replicate"].replace("/", " ").replace("-", " ")
        say(f"[{n}/{len(todo)}] {cell.name} {which}: {what}" + (f" - {result['reason']}" if result["status"] == "failed" else ""))
        write_text_atomic(out / "grid.json", json.dumps(statuses, indent=2))
    order = {r.path: k for k, r in enumerate(as_replicate(s) for s in seeds)}
    for status in statuses.values():
        status["seeds"] = dict(sorted(status["seeds"].items(), key=lambda kv: order.get(kv[0], 0)))  # the grid's order, whatever finished first
        failed = [r for r in status["seeds"].values() if r["status"] == "failed"]
        if failed and status["status"] == "done":
            status["status"] = "failed" if len(failed) == len(status["seeds"]) else "partial"
            status["reason"] = "; ".join(f"{r['replicate']}: {r['reason']}" for r in failed)
    write_text_atomic(out / "grid.json", json.dumps(statuses, indent=2))
    return statuses
