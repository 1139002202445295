"""From run folders to a leaderboard: per-run numbers, aggregates over seeds, and the files.

A run folder holds ``metrics.json`` (selection on validation, test at the selected checkpoint) and
``eval/results.json`` (every modality subset, noise curves, parameters, FLOPs). Runs named
``seed-<k>`` are the seeds of the cell their parent folder names; any other run folder is a cell
with one seed. Every number is aggregated over a cell's seeds as mean, std and a 95% t-interval
(:func:`~fusionzoo.compare.stats.mean_ci`).

The board ranks by the task's headline metric (:mod:`~fusionzoo.training.tasks`): test accuracy for
multi-class runs, mAP for multi-label, MAE (lower first) for regression; every cell must share it.

*Effective robustness* (MultiBench) is a run's drop under noise, ``relative_robustness - clean
accuracy`` (mean over the noised modalities; for an error metric the sign is turned, so a drop is
negative either way), minus the mean drop of a reference cell (late fusion, ``weighted_late``, when
the grid has it): above 0 the method loses less than the reference as noise grows.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors.torch import load_file

from fusionzoo.atomic import pyplot, save_figure_atomic, write_json_atomic, write_text_atomic
from fusionzoo.compare.stats import friedman, holm, mean_ci, paired_comparison
from fusionzoo.training.runfolder import claim_output
from fusionzoo.training.tasks import lower_is_better

__all__ = ["run_numbers", "collect_runs", "aggregate", "build_leaderboard", "write_leaderboard", "format_aggregate"]

SEED_DIR = re.compile(r"^seed-(-?\d+)$")
FOLD_DIR = re.compile(r"^fold-(\d+)$")
PERCENT = ("accuracy", "macro_f1", "mAP", "micro_f1", "exact_match")  # shown as %; other metrics as numbers


def headline_metric(test: Mapping[str, Any]) -> str:
    """The task's headline metric, from the names of a run's test metrics."""
    return "mAP" if "mAP" in test else "mae" if "mae" in test else "mean_R@1" if "mean_R@1" in test else "accuracy"


def run_numbers(run_dir: str | Path) -> dict[str, Any]:
    """The flat numbers of one finished run (``metrics.json``; ``eval/results.json`` when present)
    and its noise curves."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    numbers: dict[str, float] = {f"test/{k}": float(v) for k, v in (metrics.get("test") or {}).items() if isinstance(v, (int, float))}
    selection = {"val/best": metrics.get("best_val"), "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs_run")}
    numbers.update({k: v for k, v in selection.items() if v is not None})  # runs of older versions lack them
    metric = headline_metric(metrics.get("test") or {})
    sign = -1.0 if lower_is_better(metric) else 1.0
    log = run_dir / "log.jsonl"  # training time of every epoch, also across resumes and engine versions
    epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    numbers["train_seconds"] = sum(r["epoch_seconds"] for r in epochs) if epochs else metrics["train_seconds"]
    curves, levels = {}, []
    results = run_dir / "eval" / "results.json"
    if results.is_file():
        ev = json.loads(results.read_text())
        for row in ev["subsets"]:
            numbers[f"subset/{'+'.join(row['modalities'])}/{metric}"] = row[metric]
        numbers.update({"params": ev["params"], "flops_per_sample": ev["flops_per_sample"]})
        curves = {m: [p[metric] for p in pts] for m, pts in ev["robustness"].items()}
        levels = [p["level"] for p in next(iter(ev["robustness"].values()), [])]
        rel = ev.get("relative_robustness") or {}
        for m, value in rel.items():
            numbers[f"robustness/{m}"] = value
        if rel:
            numbers["robustness/mean"] = sum(rel.values()) / len(rel)
            numbers["robustness/drop"] = sign * sum(rel[m] - curves[m][0] for m in rel) / len(rel)
    explained = run_dir / "explain" / "test" / "summary.json"  # written by `fusionzoo train --evaluate`
    if explained.is_file():
        overall = json.loads(explained.read_text())["classes"][-1]
        numbers.update({f"share/{m}": float(v) for m, v in overall["share"].items()})
    return {"run_dir": str(run_dir), "seed": metrics.get("seed"), "metric": metric, "numbers": numbers, "curves": curves, "levels": levels}


def collect_runs(root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every finished run under ``root``, grouped by cell (sorted by seed within a cell); the
    trials of tuning studies are not among them."""
    root = Path(root)
    cells: dict[str, list[dict[str, Any]]] = {}
    for metrics in sorted(root.rglob("metrics.json")):
        run_dir = metrics.parent
        if _in_study(run_dir, root):
            continue
        seed = SEED_DIR.match(run_dir.name)
        cell_dir = run_dir.parent if seed else run_dir
        fold = FOLD_DIR.match(cell_dir.name) if seed else None
        cell_dir = cell_dir.parent if fold else cell_dir
        rel = cell_dir.relative_to(root) if cell_dir != root else Path(root.name)
        name = rel.relative_to("cells").as_posix() if rel.parts[:1] == ("cells",) and len(rel.parts) > 1 else rel.as_posix()
        record = run_numbers(run_dir)
        record["seed"] = int(seed.group(1)) if seed else record["seed"]
        record["fold"], record["folds"] = (int(fold.group(1)), _fold_count(run_dir)) if fold else (None, None)
        cells.setdefault(name, []).append(record)
    for runs in cells.values():
        runs.sort(key=lambda r: (r["fold"] is not None, r["fold"] or 0, r["seed"] is None, r["seed"]))
    return cells


def _in_study(run_dir: Path, root: Path) -> bool:
    """A trial of a ``fusionzoo tune`` study (``compare --tune`` keeps them in ``OUT/tune/``): a
    tuning run, not one of the compared runs. Its study folder holds ``tune.json``."""
    return any((p / "tune.json").is_file() for p in run_dir.parents if p == root or root in p.parents)


def _fold_count(run_dir: Path) -> int | None:
    """``data.folds.k`` of a fold run's saved config."""
    config = run_dir / "config.yaml"
    folds = ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("folds") if config.is_file() else None
    return folds.get("k") if isinstance(folds, dict) else None


def aggregate(runs: Sequence[Mapping[str, Any]], reference_drop: float | None = None) -> dict[str, dict]:
    """``{number: mean_ci(...)}`` over the runs (each number that every run has), plus effective
    robustness when ``reference_drop`` is given."""
    keys = set.intersection(*(set(r["numbers"]) for r in runs)) if runs else set()
    out = {k: mean_ci([r["numbers"][k] for r in runs]) for k in sorted(keys)}
    if reference_drop is not None and "robustness/drop" in keys:
        out["robustness/effective"] = mean_ci([r["numbers"]["robustness/drop"] - reference_drop for r in runs])
    return out


def _reference(cells: Mapping[str, list], fusions: Mapping[str, str | None], reference: str | None) -> str | None:
    if reference is not None:
        if reference not in cells:
            raise ValueError(f"--reference {reference!r} is not a finished cell; cells: {sorted(cells)}")
        return reference
    late = [c for c in cells if fusions.get(c) == "weighted_late" or c.split(",")[0] == "fusion=weighted_late"]
    return late[0] if late else None


def build_leaderboard(
    cells: Mapping[str, list[dict[str, Any]]],
    statuses: Mapping[str, Mapping[str, Any]] | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    """The leaderboard as data: cells ranked by the mean of the task's headline test metric (best
    first), each with its aggregates, seeds and mean curves; skipped, failed and partly failed cells
    from ``statuses`` (``{cell: {status, reason}}``, what :func:`~fusionzoo.compare.runner.run_grid`
    returns)."""
    statuses = statuses or {}
    metrics = {r.get("metric", "accuracy") for runs in cells.values() for r in runs}
    if len(metrics) > 1:
        raise ValueError(f"the runs measure different tasks (headline metrics {sorted(metrics)}); compare like with like")
    metric = metrics.pop() if metrics else "accuracy"
    headline, lower = f"test/{metric}", lower_is_better(metric)
    fusions = {c: s.get("fusion") for c, s in statuses.items()}
    ref = _reference(cells, fusions, reference)
    ref_drop = None
    if ref is not None:
        drops = [r["numbers"]["robustness/drop"] for r in cells[ref] if "robustness/drop" in r["numbers"]]
        ref_drop = sum(drops) / len(drops) if drops else None
    rows = []
    for name, runs in cells.items():
        stats = aggregate(runs, ref_drop)
        levels = runs[0]["levels"]
        curves = {m: [sum(r["curves"][m][i] for r in runs) / len(runs) for i in range(len(levels))] for m in runs[0]["curves"]}
        rows.append({
            "cell": name, "fusion": fusions.get(name), "seeds": sorted({r["seed"] for r in runs}, key=str),
            "folds": sorted({r["fold"] for r in runs if r.get("fold") is not None}), "runs": [r["run_dir"] for r in runs],
            "metrics": stats, "levels": levels, "mean_curves": curves, "notes": statuses.get(name, {}).get("notes", []),
        })
    worst = float("inf") if lower else float("-inf")
    rows.sort(key=lambda r: (1 if lower else -1) * r["metrics"].get(headline, {}).get("mean", worst))
    problems = {c: dict(s) for c, s in statuses.items() if s.get("status") in ("skipped", "failed", "partial")}
    board = {"metric": metric, "reference": ref, "cells": rows, "problems": problems, "overlap": _overlap(rows, headline)}
    if metric == "accuracy":
        _bootstrap(cells, rows)
    return board | _paired(cells, rows, headline, lower)


#: Bootstrap resamples of the pooled test samples (seeded: the leaderboard is reproducible).
BOOTSTRAP = 2000


def _correct(runs: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
    """Per test sample, the fraction of the cell's seeds that classify it correctly, the folds'
    test splits pooled (every sample once); None without saved predictions for every run."""
    files = [Path(r["run_dir"]) / "test_predictions.safetensors" for r in runs]
    if not files or not all(f.is_file() for f in files):
        return None
    by_seed: dict[Any, list[tuple[Any, np.ndarray]]] = {}
    for run, file in zip(runs, files):
        saved = load_file(str(file))
        labels = saved["labels"]
        keep = labels >= 0
        hit = (saved["outputs"].argmax(1) == labels)[keep].double().numpy()
        by_seed.setdefault(run["seed"], []).append((run.get("fold") or 0, hit))
    pooled = [np.concatenate([h for _, h in sorted(parts, key=lambda x: x[0])]) for parts in by_seed.values()]
    return np.mean(pooled, axis=0) if len({len(x) for x in pooled}) == 1 else None


def _bootstrap(cells: Mapping[str, list[dict[str, Any]]], rows: list[dict[str, Any]]) -> None:
    """``row["bootstrap"]``: the pooled test accuracy with its 95% percentile interval over
    :data:`BOOTSTRAP` resamples of the test samples, and against the best cell the same for the
    per-sample difference (paired: the same samples resampled for both)."""
    correct = {r["cell"]: _correct(cells[r["cell"]]) for r in rows}
    sizes = {len(c) for c in correct.values() if c is not None}
    if not rows or correct[rows[0]["cell"]] is None or len(sizes) != 1:  # the best's, and the same samples for all
        return
    n = sizes.pop()
    index = np.random.default_rng(0).integers(0, n, (BOOTSTRAP, n))
    best = rows[0]["cell"]
    for r in rows:
        c = correct[r["cell"]]
        if c is None:
            continue
        low, high = np.percentile(c[index].mean(1), [2.5, 97.5])
        r["bootstrap"] = {"mean": float(c.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(len(c))}
        if r["cell"] != best:
            d = c - correct[best]
            low, high = np.percentile(d[index].mean(1), [2.5, 97.5])
            r["bootstrap"]["vs_best"] = {"mean": float(d.mean()), "ci_low": float(low), "ci_high": float(high)}


def _paired(cells: Mapping[str, list[dict[str, Any]]], rows: list[dict[str, Any]], headline: str, lower: bool) -> dict[str, Any]:
    """Each cell against the best over the seeds both ran (paired: the same seed is the same split
    and initialisation draw), Holm-adjusted across cells, and the Friedman test with average ranks
    and the Nemenyi critical difference over the seeds every cell ran; each row gets ``paired``."""
    scores = {r["cell"]: {(run.get("fold"), run["seed"]): run["numbers"][headline] for run in cells[r["cell"]] if headline in run["numbers"]}
              for r in rows}
    ranked = [r for r in rows if scores[r["cell"]]]
    if len(ranked) < 2:
        return {"friedman": None}
    best = ranked[0]["cell"]
    k = next((run["folds"] for run in cells[best] if run.get("folds")), None)
    ratio = 1 / (k - 2) if k else 0.0  # k-fold with a validation fold: n_test / n_train = 1 / (k - 2)
    compared = {r["cell"]: paired_comparison(scores[r["cell"]], scores[best], test_train_ratio=ratio) for r in ranked[1:]}
    adjusted = holm({c: v["p_t"] for c, v in compared.items()})
    for r in ranked[1:]:
        r["paired"] = {**compared[r["cell"]], "vs": best, "p_holm": adjusted[r["cell"]]}
    return {"friedman": friedman({r["cell"]: scores[r["cell"]] for r in ranked}, lower_is_better=lower), "folds": k}


def _overlap(rows: Sequence[Mapping[str, Any]], headline: str) -> dict[str, Any] | None:
    """Which cells' 95% intervals of the headline metric overlap the best cell's."""
    ranked = [r for r in rows if headline in r["metrics"]]
    if not ranked or ranked[0]["metrics"][headline]["ci_low"] is None:
        return None
    best = ranked[0]["metrics"][headline]
    overlapping = [
        r["cell"] for r in ranked[1:]
        if r["metrics"][headline]["ci_low"] is not None
        and r["metrics"][headline]["ci_low"] <= best["ci_high"] and r["metrics"][headline]["ci_high"] >= best["ci_low"]
    ]
    return {"best": ranked[0]["cell"], "overlapping": overlapping}


def _shown(metric: str):
    """Formats a metric's aggregate: percent for rates, three decimals for errors and correlations."""
    return _pct if metric in PERCENT else (lambda stat: _pct(stat, scale=1.0, digits=3))


def _pct(stat: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    if not stat:
        return "-"
    text = f"{scale * stat['mean']:.{digits}f}"
    return text + (f" ± {scale * stat['half_width']:.{digits}f}" if stat["half_width"] is not None else "")


def _modalities(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    subsets = [k.split("/")[1] for r in rows for k in r["metrics"] if k.startswith("subset/")]
    return sorted({m for s in subsets for m in s.split("+")})


def format_markdown(board: Mapping[str, Any], title: str = "Leaderboard", header_lines: Sequence[str] = ()) -> str:
    """The leaderboard as a Markdown table with notes on what it measures and where intervals overlap."""
    rows, metric = board["cells"], board.get("metric", "accuracy")
    show, headline = _shown(metric), f"test/{metric}"
    mods = _modalities(rows)
    has_eff = any("robustness/effective" in r["metrics"] for r in rows)
    label = "test acc. (%)" if metric == "accuracy" else f"test {metric}" + (" (%)" if metric in PERCENT else "")
    shares = [m for m in mods if any(f"share/{m}" in r["metrics"] for r in rows)]
    runs = "folds x seeds" if any(r.get("folds") for r in rows) else "seeds"
    head = ["#", "cell", runs, label] + [f"{m} missing" for m in mods] + ["rel. robustness"]
    head += ["eff. robustness"] if has_eff else []
    head += ["contribution shares (%)"] if shares else []
    paired = any("paired" in r for r in rows)
    head += ["Δ vs best (paired)", "p (Holm)"] if paired else []
    booted = any("bootstrap" in r for r in rows)
    head += ["pooled test acc. (%, bootstrap 95%)"] if booted else []
    head += ["params", "MFLOPs/sample", "train s"]
    lines = [f"# {title}", "", *header_lines, "" if header_lines else "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        m = r["metrics"]
        without = [show(m.get(f"subset/{'+'.join(x for x in mods if x != gone)}/{metric}")) if len(mods) > 1 else "-" for gone in mods]
        replicates = f"{len(r['folds'])}x{len(r['seeds'])}" if r.get("folds") else str(len(r["seeds"]))
        cells = [str(i), r["cell"], replicates, show(m.get(headline)), *without, show(m.get("robustness/mean"))]
        cells += [show(m.get("robustness/effective"))] if has_eff else []
        if shares:
            cells.append(", ".join(f"{x} {100 * m[f'share/{x}']['mean']:.0f}" if f"share/{x}" in m else f"{x} -" for x in shares))
        if paired:
            cells += _paired_cells(r.get("paired"), metric)
        if booted:
            b = r.get("bootstrap")
            cells.append(f"{100 * b['mean']:.1f} [{100 * b['ci_low']:.1f}, {100 * b['ci_high']:.1f}]" if b else "-")
        params = m.get("params", {}).get("mean")
        flops = m.get("flops_per_sample", {}).get("mean")
        seconds = m.get("train_seconds", {}).get("mean")
        cells += [f"{params / 1e3:.1f}K" if params else "-", f"{flops / 1e6:.2f}" if flops else "-", (f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}") if seconds else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_notes(board)]
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def _paired_cells(paired: Mapping[str, Any] | None, metric: str) -> list[str]:
    """The ``Δ vs best`` (mean ± half-width of its t interval) and Holm-adjusted p of one row."""
    if not paired or paired["mean"] is None:
        return ["best" if paired is None else "-", "-"]
    scale = 100.0 if metric in PERCENT else 1.0
    delta = f"{scale * paired['mean']:+.{1 if scale == 100 else 3}f}"
    if paired["ci_low"] is not None:
        delta += f" ± {scale * (paired['ci_high'] - paired['mean']):.{1 if scale == 100 else 3}f}"
    return [delta, "-" if paired["p_holm"] is None else f"{paired['p_holm']:.3g}"]


def _paired_notes(board: Mapping[str, Any]) -> list[str]:
    """What the paired tests and the Friedman test say, in words."""
    rows = [r for r in board["cells"] if r.get("paired") and r["paired"]["p_holm"] is not None]
    if not rows:
        return []
    best = rows[0]["paired"]["vs"]
    apart = [f"`{r['cell']}`" for r in rows if r["paired"]["p_holm"] < 0.05]
    close = [f"`{r['cell']}`" for r in rows if r["paired"]["p_holm"] >= 0.05]
    n, k = max(r["paired"]["n"] for r in rows), board.get("folds")
    pairs = f"(fold, seed) pairs of {k}-fold cross-validation" if k else "seeds"
    test = (f"the paired t-test with the Nadeau-Bengio correction for overlapping training folds (n_test / n_train = 1/{k - 2})"
            if k else "the two-sided paired t-test")
    notes = [
        f"*Δ vs best (paired)*: the cell's test {board['metric']} minus `{best}`'s on the same {pairs} (mean ± half-width of the "
        f"95% t-interval of the differences); *p (Holm)*: {test}, Holm-adjusted over the {len(rows)} cells "
        f"(the Wilcoxon signed-rank p is in leaderboard.json; with {n} pairs its smallest possible value is {2 / 2 ** n:.3g}).",
        (f"Distinguishable from `{best}` at 0.05: {', '.join(apart)}." if apart else f"No cell is distinguishable from `{best}` at 0.05.")
        + (f" Not distinguishable: {', '.join(close)}." if close and apart else ""),
    ]
    f = board.get("friedman")
    if f is not None:
        notes.append(
            f"Friedman test over all {len(f['ranks'])} cells and {f['n']} {'(fold, seed) pairs' if k else 'seeds'}: p = {f['p']:.3g}; average ranks "
            + ", ".join(f"`{c}` {r:.2f}" for c, r in sorted(f["ranks"].items(), key=lambda x: x[1]))
            + f"; Nemenyi critical difference {f['cd']:.2f} (cells closer in average rank are not distinguishable; `cd.png`)."
        )
        ranks = sorted(f["ranks"].items(), key=lambda x: x[1])
        apart_pairs = [f"`{a}` and `{b}` ({rb - ra:.2f})" for i, (a, ra) in enumerate(ranks) for b, rb in ranks[i + 1:] if rb - ra > f["cd"]]
        if f["p"] < f["alpha"]:
            notes.append("The Friedman test rejects equal ranks; by the Nemenyi test, ranks further apart than the critical difference: "
                         + (", ".join(apart_pairs) + "." if apart_pairs else "none."))
    return notes


def _notes(board: Mapping[str, Any]) -> list[str]:
    metric = board.get("metric", "accuracy")
    name = {"accuracy": "accuracy", "mae": "MAE (lower is better)"}.get(metric, metric)
    notes = [
        f"Mean ± half-width of the 95% t-interval over the runs ({'folds x seeds' if board.get('folds') else 'seeds'}). "
        f"Test {name} is measured once per run, on the "
        f"checkpoint selected on validation. *m missing*: test {metric} with modality *m* removed. "
        f"*rel. robustness*: area under test {metric} vs noise level, divided by the level range (mean over the noised modalities)."
    ]
    if any(k.startswith("share/") for r in board["cells"] for k in r["metrics"]):
        notes.append(
            "*contribution shares*: each modality's share of the mean |Shapley value| over the test samples (`fusionzoo explain`: "
            "of the predicted class's logit; of each label's logit, of the prediction for multi-label and regression runs), "
            "mean over seeds: a method that ignores a modality shows it near 0."
        )
    if board["reference"]:
        notes.append(f"*eff. robustness*: the run's {metric} drop under noise minus the mean drop of `{board['reference']}` (above 0: loses less).")
    overlap = board["overlap"]
    if overlap is not None:
        if overlap["overlapping"]:
            names = ", ".join(f"`{c}`" for c in overlap["overlapping"])
            pairs = "(fold, seed) pairs" if board.get("folds") else "seeds"
            notes.append(f"The marginal intervals of {names} overlap that of the best, `{overlap['best']}`; the paired tests "
                         f"below compare on the same {pairs}, which is sharper.")
        else:
            notes.append(f"No other cell's interval overlaps that of the best, `{overlap['best']}`.")
    notes += _paired_notes(board)
    booted = [r for r in board["cells"] if "bootstrap" in r]
    if booted:
        best = booted[0]
        apart = [f"`{r['cell']}`" for r in booted[1:] if "vs_best" in r["bootstrap"] and r["bootstrap"]["vs_best"]["ci_high"] < 0]
        notes.append(
            f"*pooled test acc.*: the {best['bootstrap']['n']} test samples of every fold pooled (each tested once; a sample's "
            f"correctness averaged over seeds), with the 95% percentile interval over {BOOTSTRAP} bootstrap resamples of the samples. "
            f"Its paired difference from `{best['cell']}` (the same resamples) excludes 0 for: {', '.join(apart) if apart else 'none'} "
            "(this interval is over test samples only: it says how sure the pooled number is, not how a new training run would score)."
        )
    for cell, status in board["problems"].items():
        notes.append(f"`{cell}` {status['status']}: {status.get('reason', '')}")
    return [f"- {n}" for n in notes]


def format_csv(board: Mapping[str, Any]) -> str:
    keys = sorted({k for r in board["cells"] for k in r["metrics"]})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "cell", "fusion", "seeds"] + [f"{k}:{s}" for k in keys for s in ("mean", "std", "ci_low", "ci_high")])
    for i, r in enumerate(board["cells"], 1):
        values = [r["metrics"].get(k, {}).get(s) for k in keys for s in ("mean", "std", "ci_low", "ci_high")]
        writer.writerow([i, r["cell"], r["fusion"] or "", " ".join(map(str, r["seeds"]))] + ["" if v is None else f"{v:.6g}" for v in values])
    for cell, status in board["problems"].items():
        writer.writerow(["", cell, status.get("fusion") or "", status["status"] + ": " + status.get("reason", "")])
    return out.getvalue()


def write_leaderboard(board: Mapping[str, Any], out: str | Path, title: str = "Leaderboard", header_lines: Sequence[str] = ()) -> list[Path]:
    """``leaderboard.{md,csv,json}``, ``leaderboard.png``, ``robustness.png`` and ``cd.png`` in
    ``out``; such a file there that compare did not write is refused, never overwritten
    (:func:`~fusionzoo.training.runfolder.claim_output`)."""
    out = Path(out)
    paths = [out / "leaderboard.md", out / "leaderboard.csv", out / "leaderboard.json"]
    names = [p.name for p in paths] + ["leaderboard.png", "robustness.png", "cd.png"]
    claim_output(out, names, "compare", known=_written_by_compare(paths[2]))
    write_text_atomic(paths[0], format_markdown(board, title, header_lines))
    write_text_atomic(paths[1], format_csv(board))
    write_json_atomic(paths[2], {"written_by": WRITTEN_BY, "title": title, "header": list(header_lines), **board})
    paths += _plots(board, out)
    return paths


WRITTEN_BY = "fusionzoo compare"


def _written_by_compare(path: Path) -> bool:
    """Whether ``leaderboard.json`` is compare's: marked so, or an older compare's (its keys)."""
    try:
        record = json.loads(path.read_text())
        return record.get("written_by") == WRITTEN_BY or {"title", "header", "cells"} <= set(record)
    except (OSError, ValueError, AttributeError):
        return False


def _plots(board: Mapping[str, Any], out: Path) -> list[Path]:
    plt = pyplot()
    metric = board.get("metric", "accuracy")
    headline, scale = f"test/{metric}", 100.0 if metric in PERCENT else 1.0
    unit = ", %" if metric in PERCENT else ""
    rows = [r for r in board["cells"] if headline in r["metrics"]]
    if plt is None or not rows:
        return []
    written = _cd_plot(plt, board.get("friedman"), out, "(fold, seed) pairs" if board.get("folds") else "seeds")
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1.2))
    stats = [r["metrics"][headline] for r in rows][::-1]
    errors = [0 if s["half_width"] is None else scale * s["half_width"] for s in stats]
    ax.barh([r["cell"] for r in rows][::-1], [scale * s["mean"] for s in stats], xerr=errors, capsize=3, color="tab:blue")
    if metric in PERCENT:
        low = min(100 * s["mean"] - e for s, e in zip(stats, errors))
        ax.set_xlim(max(0, low - 5), 100)
    ax.set_xlabel(f"test {metric}{unit} (mean and 95% CI over seeds)")
    save_figure_atomic(fig, out / "leaderboard.png")
    curved = [r for r in rows if r["mean_curves"]]
    if not curved:
        return [out / "leaderboard.png", *written]
    mods = list(curved[0]["mean_curves"])
    fig, axes = plt.subplots(1, len(mods), figsize=(4.5 * len(mods), 3.5), squeeze=False)
    for ax, m in zip(axes[0], mods):
        for i, r in enumerate(curved):  # 10 colours, then the next line style
            style = ("-", "--", ":")[i // 10 % 3]
            ax.plot(r["levels"], [scale * a for a in r["mean_curves"][m]], marker="o", markersize=3, linestyle=style, label=r["cell"])
        ax.set_title(f"noise on {m}"), ax.set_xlabel("noise level"), ax.set_ylabel(f"test {metric}{unit} (mean over seeds)")
    axes[0][-1].legend(fontsize=6)
    save_figure_atomic(fig, out / "robustness.png")
    return [out / "leaderboard.png", out / "robustness.png", *written]


def _cd_plot(plt: Any, result: Mapping[str, Any] | None, out: Path, pairs: str = "seeds") -> list[Path]:
    """``cd.png``: the cells on the axis of average ranks (1 = best, the top edge) with the Nemenyi
    critical difference drawn to scale; cells joined by a red bar are not distinguishable (Demšar 2006)."""
    if result is None:
        return []
    ranks = sorted(result["ranks"].items(), key=lambda x: x[1])
    k, cd = len(ranks), result["cd"]
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.3 * k))
    ax.set_xlim(0.5, k + 0.5), ax.set_ylim(-(k + 0.5), 2.2)
    ax.set_xticks(range(1, k + 1)), ax.xaxis.tick_top(), ax.set_yticks([])
    for spine in ("left", "right", "bottom"):
        ax.spines[spine].set_visible(False)
    ax.plot([1, 1 + cd], [1.6, 1.6], color="black", linewidth=1.5)
    ax.text(1 + cd / 2, 1.75, f"CD = {cd:.2f}", ha="center", fontsize=7)
    groups: list[tuple[int, int]] = []  # maximal runs of cells closer than cd to the run's first
    for i in range(k):
        j = max(j for j in range(i, k) if ranks[j][1] - ranks[i][1] < cd)
        if j > i and (not groups or j > groups[-1][1]):
            groups.append((i, j))
    for g, (i, j) in enumerate(groups):
        ax.plot([ranks[i][1] - 0.03, ranks[j][1] + 0.03], [0.9 - 0.35 * g] * 2, color="tab:red", linewidth=3)
    for i, (cell, r) in enumerate(ranks):
        ax.plot([r, r], [2.2, -(i + 1)], color="grey", linewidth=0.8, zorder=0)
        ax.text(r + 0.05, -(i + 1), f"{cell} ({r:.2f})", va="center", fontsize=7)
    ax.set_title(f"Average rank over {result['n']} {pairs} (Friedman p = {result['p']:.3g})", fontsize=8, pad=16)
    save_figure_atomic(fig, out / "cd.png")
    return [out / "cd.png"]


def format_aggregate(stats: Mapping[str, Mapping[str, Any]]) -> str:
    """One cell's aggregate as a Markdown table: number, mean, std, 95% CI, n."""
    lines = ["| number | mean | std | 95% CI | n |", "|---|---:|---:|---|---:|"]
    for key, s in stats.items():
        ci = f"[{s['ci_low']:.4g}, {s['ci_high']:.4g}]" if s["ci_low"] is not None else "-"
        std = f"{s['std']:.4g}" if s["std"] is not None else "-"
        lines.append(f"| {key} | {s['mean']:.4g} | {std} | {ci} | {s['n']} |")
    return "\n".join(lines) + "\n"
