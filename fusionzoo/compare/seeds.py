"""One config, several seeds (and folds): a run per seed under ``RUN/seed-<k>/`` (``RUN/fold-<f>/seed-<k>/``) and their aggregate."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from fusionzoo.atomic import write_json_atomic, write_text_atomic
from fusionzoo.compare.grid import replicates
from fusionzoo.compare.leaderboard import aggregate, format_aggregate, run_numbers
from fusionzoo.config import load_config
from fusionzoo.training.engine import default_run_dir, train
from fusionzoo.training.robustness import evaluate_run

__all__ = ["train_seeds"]


def train_seeds(
    config: Any,
    seeds: Sequence[int] | None = None,
    run_dir: str | Path | None = None,
    overrides: Iterable[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    log: bool = True,
    say: Callable[[str], None] = print,
    folds: int | None = None,
) -> dict[str, Any]:
    """Train (and evaluate under every modality subset and noise level) one run per seed, and with
    ``folds`` per fold of k-fold cross-validation (``RUN/fold-F/seed-S/``), then write
    ``aggregate.json`` and ``aggregate.md``: mean, std and 95% t-interval of every number over the
    runs. ``seeds`` default to the config's ``seed:`` list."""
    overrides = list(overrides)
    cfg = load_config(config, overrides)
    seeds = list(seeds) if seeds is not None else cfg.seeds
    root = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    records = []
    for replicate in replicates(seeds, folds):
        sub = root / replicate.path
        say(f"{replicate.path.replace('/', ' ')} -> {sub}")
        train(config, run_dir=sub, resume=resume, overwrite=overwrite, overrides=[*overrides, *replicate.overrides], log=log)
        evaluate_run(sub)
        records.append({**run_numbers(sub), "seed": replicate.seed, "fold": replicate.fold})
    stats = aggregate(records)
    result = {"config": cfg.origin, "seeds": seeds, "folds": folds, "root": str(root), "runs": [r["run_dir"] for r in records], "aggregate": stats}
    write_json_atomic(root / "aggregate.json", result)
    what = f"{folds} folds x {len(seeds)} seeds" if folds else f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
    write_text_atomic(root / "aggregate.md", f"# {cfg.name}: {what}\n\n" + format_aggregate(stats))
    return result
