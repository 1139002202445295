"""One config, several seeds: a run per seed under ``RUN/seed-<k>/`` and their aggregate."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from fusionzoo.atomic import write_json_atomic, write_text_atomic
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
) -> dict[str, Any]:
    """Train (and evaluate under every modality subset and noise level) one run per seed, then
    write ``aggregate.json`` and ``aggregate.md``: mean, std and 95% t-interval of every number.
    ``seeds`` default to the config's ``seed:`` list."""
    overrides = list(overrides)
    cfg = load_config(config, overrides)
    seeds = list(seeds) if seeds is not None else cfg.seeds
    root = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    records = []
    for seed in seeds:
        seed_dir = root / f"seed-{seed}"
        say(f"seed {seed} -> {seed_dir}")
        train(config, run_dir=seed_dir, resume=resume, overwrite=overwrite, overrides=[*overrides, f"seed={seed}"], log=log)
        evaluate_run(seed_dir)
        records.append({**run_numbers(seed_dir), "seed": seed})
    stats = aggregate(records)
    result = {"config": cfg.origin, "seeds": seeds, "runs": [r["run_dir"] for r in records], "aggregate": stats}
    write_json_atomic(root / "aggregate.json", result)
    write_text_atomic(root / "aggregate.md", f"# {cfg.name}: {len(seeds)} seeds ({', '.join(map(str, seeds))})\n\n" + format_aggregate(stats))
    return result
