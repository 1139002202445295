"""``compare --tune``: every cell tuned with the same budget before its runs, so the leaderboard
compares tuned methods.

Each cell's study (``OUT/tune/<cell>/``, a ``fusionzoo tune`` of the base config with the cell's
overrides) searches the config's ``tune.space`` on the validation split of the grid's first
replicate (its first seed; with ``--folds``, fold 0); the cell's runs then use the best values. A
space key the grid sets itself is refused (the grid's value would be tuned away). Run again, the
finished studies are read back, so the same values (and the finished runs) are reused.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fusionzoo.compare.grid import Cell, Replicate
from fusionzoo.config import load_config
from fusionzoo.errors import ConfigError
from fusionzoo.launch import Launcher, run_logged
from fusionzoo.tuning.space import SearchSpace

__all__ = ["tune_cells", "tuning_header"]


def _study_dir(out: Path, cell: Cell) -> Path:
    return Path(out) / "tune" / cell.name


def _tune_one(config: str, cell: Cell, first: Replicate, out: str, trials: int | None, threads: int, cwd: str) -> dict[str, Any]:
    """One cell's study as its own ``fusionzoo tune`` process (in a local thread, a Ray task or a Slurm job)."""
    study_dir = _study_dir(Path(out), cell)
    sets = [a for o in (*cell.overrides, *first.overrides) for a in ("--set", o)]
    command = [sys.executable, "-m", "fusionzoo", "tune", config, "--out", str(study_dir), "--study", cell.name, *sets]
    command += ["--trials", str(trials)] if trials is not None else []
    code, last = run_logged(command, Path(cwd) / study_dir / "tune.log", cwd, threads)
    return {"exit": code, "last": last, "log": str(study_dir / "tune.log")}


def tune_cells(
    config: str | Path, cells: Sequence[Cell], first: Replicate, out: str | Path, trials: int | None, launcher: Launcher,
    say: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Tune every cell that is not skipped; each gets the best values as overrides (and a note),
    or is skipped when its study found none. Returns ``tune.json`` of each cell."""
    base = load_config(config)
    if "tune" not in base.raw:
        raise ConfigError(f"{base.origin}: tune: compare --tune needs the config's search space (a tune: {{space: ...}} section)")
    space = SearchSpace.from_section(base.raw["tune"].get("space"), base.origin)
    todo = [c for c in cells if c.skipped is None]
    for cell in todo:
        clash = sorted({o.partition("=")[0] for o in cell.overrides} & {p.key for p in space.parameters})
        if clash:
            raise ConfigError(f"compare --tune: the grid sets {', '.join(clash)}, which tune.space also searches; drop one of them")
    say(f"tuning {len(todo)} cells, {trials or base.raw['tune'].get('trials', 20)} trials each -> {Path(out) / 'tune'}")
    items = [(str(config), c, first, str(out), trials, launcher.cpus_per_task, os.getcwd()) for c in todo]

    def lost(item: tuple, error: BaseException) -> dict[str, Any]:
        return {"exit": None, "last": launcher.failure(error), "log": ""}

    results = {}
    for i, run in launcher.map(_tune_one, items, lost):
        cell = todo[i]
        summary_file = _study_dir(Path(out), cell) / "tune.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        best = summary.get("best")
        if run["exit"] != 0 or not best:
            cell.skipped = f"tuning found no config: {run['last']} (log: {run['log']})"
            say(f"tune {cell.name}: {cell.skipped}")
            continue
        cell.overrides = (*cell.overrides, *best["overrides"])
        cell.notes.append(f"tuned ({summary['trials']['complete']} of {summary['budget']} trials complete): " + ", ".join(best["overrides"]))
        results[cell.name] = summary
        say(f"tune {cell.name}: best val {summary['metric']} {best['val']:.4f} [{', '.join(best['overrides'])}]")
    return results


def tuning_header(root: str | Path) -> list[str]:
    """The leaderboard's header lines on the tuning under ``root/tune`` (none without it)."""
    studies = sorted(Path(root).glob("tune/*/tune.json"))
    summaries = [json.loads(p.read_text()) for p in studies]
    summaries = [s for s in summaries if s.get("budget")]
    if not summaries:
        return []
    budgets = sorted({s["budget"] for s in summaries})
    space = ", ".join(f"{k} {next(iter(v))} {next(iter(v.values()))}" for k, v in summaries[0]["space"].items())
    return [
        f"Tuned: each of {len(summaries)} cells by its own Optuna study of {' / '.join(map(str, budgets))} trials ({summaries[0]['sampler']}, "
        f"{summaries[0]['pruner']}) over {space}, selected on validation {summaries[0]['metric']} of the first replicate; "
        "each cell's chosen values are in its notes and in tune/<cell>/best_config.yaml.", "",
    ]
