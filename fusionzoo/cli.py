"""The ``fusionzoo`` command: ``list``, ``info``, ``train``, ``eval``, ``explain``, ``compare``, ``bench``, ..."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import fusionzoo
from fusionzoo.config import build_model, load_config
from fusionzoo.errors import ConfigError, RunFolderError, TrainingDiverged
from fusionzoo.zoo import headline
from fusionzoo.extras import MissingExtraError
from fusionzoo.registry import REGISTRIES, closest, required_kwargs

__all__ = ["main", "format_table"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _format_params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}K" if n >= 1000 else str(n)


def _list(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(REGISTRIES)
    for i, kind in enumerate(kinds):
        registry = REGISTRIES[kind]
        rows = []
        for name in registry.list(args.pattern):
            entry = registry.get(name)
            params = "?"
            try:
                params = _entry_params(kind, entry)
            except Exception as e:  # a broken entry must not hide the others
                print(f"warning: {kind} {name!r} failed to build: {e}", file=sys.stderr)
            kind_col = entry.modality or entry.input_kind or "-"
            last = headline(name) if kind == "models" and "pretrained" in entry.tags else entry.paper or "-"
            rows.append([name, kind_col, params, last])
        if i:
            print()
        print(f"{kind} ({len(rows)})")
        if rows:
            print(format_table(["name", "modality/input", "params", "test metric" if kind == "models" else "paper"], rows))
            if any(row[2].endswith("*") for row in rows):
                print("* at the entry's example sizes (its constructor has required arguments, e.g. in_dims)")
    return 0


def _entry_params(kind: str, entry) -> str:
    """Parameter count at the constructor's defaults, or at the example sizes (marked ``*``) when the
    constructor needs arguments (fusion blocks need ``in_dims``)."""
    if kind in ("datasets", "optimizers"):
        return "-"
    marked = bool(required_kwargs(entry.fn))
    obj = entry.example() if marked else entry.build()
    if not isinstance(obj, torch.nn.Module):
        return "-"
    return _format_params(sum(p.numel() for p in obj.parameters())) + ("*" if marked else "")


def _info_entry(name: str) -> int:
    found = [(kind, reg) for kind, reg in REGISTRIES.items() if name in reg]
    if not found:
        known = sorted({n for reg in REGISTRIES.values() for n in reg})
        hint = closest(name, known)
        print(f"error: no entry named {name!r}" + (f"; did you mean {', '.join(hint)}?" if hint else ""), file=sys.stderr)
        return 2
    for kind, reg in found:
        info = reg.get(name).describe()
        print(f"[{kind}] {name}")
        for key, value in info.items():
            if key != "name" and value not in (None, [], {}, ""):
                print(f"  {key}: {value}")
    return 0


def _info_config(path: str, overrides: Sequence[str], batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"--batch-size: expected an int >= 1, got {batch_size}")
    cfg = load_config(path, overrides)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).eval()
    batch = model.example_input(batch_size)
    start = time.perf_counter()
    with torch.no_grad():
        out = model(batch)
    elapsed = time.perf_counter() - start
    print(f"config: {path}")
    if cfg.kind == "align":
        loss = cfg.align.get("loss", {}).get("name", "info_nce")
        print(f"alignment of {' and '.join(model.order)} with {loss}, embedding width {model.out_dim}")
        parts = {f"encoders.{m}": sum(p.numel() for p in e.parameters()) for m, e in model.encoders.items()}
    else:
        print(f"fusion: {cfg.model['fusion']['name']} ({model.fusion.input_kind}), head: {cfg.model['head']['name']}")
        parts = model.num_params()
    print(format_table(["part", "params"], [[k, f"{v:,}"] for k, v in parts.items()]))
    print("forward pass on an example batch:")
    for m, x in batch.items():
        print(f"  {m}: {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}")
    shapes = {m: tuple(v.shape) for m, v in out.items()} if isinstance(out, dict) else tuple(out.shape)
    finite = all(bool(torch.isfinite(v).all()) for v in (out.values() if isinstance(out, dict) else [out]))
    print(f"  -> output {shapes} in {elapsed * 1e3:.1f} ms, finite: {finite}")
    return 0


def _info(args: argparse.Namespace) -> int:
    target = args.target
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        return _info_config(target, args.set, args.batch_size)
    return _info_entry(target)


def _train(args: argparse.Namespace) -> int:
    from fusionzoo.compare import parse_seeds, train_seeds
    from fusionzoo.compare.runner import die_with_parent
    from fusionzoo.training import evaluate_run, train

    die_with_parent()  # a compare cell: no orphan when the grid is killed

    seeds = parse_seeds(args.seeds) if args.seeds else load_config(args.config, args.set).seeds
    if len(seeds) > 1 or args.folds is not None:
        result = train_seeds(args.config, seeds, run_dir=args.run_dir, overrides=args.set, resume=args.resume, overwrite=args.overwrite,
                             folds=args.folds)
        stats = result["aggregate"]
        shown = [k for k in ("test/accuracy", "test/macro_f1", "test/mean_R@1", "test/mAP", "test/mae", "test/pearson_r") if k in stats]
        over = "runs (folds x seeds)" if args.folds is not None else "seeds"
        for key in shown:
            s = stats[key]
            print(f"{key}: {s['mean']:.4f} ± {s['half_width']:.4f} (95% CI over {s['n']} {over}; std {s['std']:.4f})")
        print(f"aggregate: {Path(result['root']) / 'aggregate.md'}")
        return 0
    overrides = [*args.set, f"seed={seeds[0]}"] if args.seeds else args.set
    summary = train(args.config, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite, overrides=overrides)
    print(_done_line(summary))
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun one process evaluates
    if args.evaluate and rank0 and summary["test"] is not None and "accuracy" in summary["test"]:
        explained = _explain_classifier(summary["run_dir"])  # before eval/: a run with eval/results.json is finished
        result = evaluate_run(summary["run_dir"])
        print(f"evaluated under {len(result['subsets'])} modality subsets and noise: {Path(summary['run_dir']) / 'eval'}"
              + (f"; modality Shapley values: {Path(summary['run_dir']) / 'explain' / 'test'}" if explained else ""))
    return 0


def _explain_classifier(run_dir: str | Path) -> bool:
    """``explain_run`` for a run with a head (a ``model:`` config, any task), what ``compare``'s
    leaderboard reads; False for an alignment run."""
    from fusionzoo.training import explain_run
    from fusionzoo.training.checkpoint import load_run_config

    if load_run_config(run_dir).kind != "model":
        return False
    explain_run(run_dir)
    return True


def _compare(args: argparse.Namespace) -> int:
    from fusionzoo.atomic import write_text_atomic
    from fusionzoo.compare import build_leaderboard, collect_runs, expand_grid, parse_seeds, run_grid, write_leaderboard
    from fusionzoo.compare.grid import replicates
    from fusionzoo.training.runfolder import claim

    if (args.config is None) == (args.collect is None):
        print("error: give a CONFIG to run a grid, or --collect DIR to build the leaderboard of finished runs", file=sys.stderr)
        return 2
    command = "fusionzoo " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["compare"] else "fusionzoo compare (from Python)"
    rebuilt = None
    if args.collect is not None:
        root = Path(args.collect)
        if not root.is_dir():
            raise FileNotFoundError(f"--collect {root}: no such folder")
        grid = root / "grid.json"
        statuses = json.loads(grid.read_text()) if grid.is_file() else {}
        out = Path(args.out) if args.out else root
        ran = root / "command.txt"  # the grid's own command, when compare ran it
        if ran.is_file():
            command, rebuilt = ran.read_text().strip(), command
    else:
        cfg = load_config(args.config, args.set)
        out = Path(args.out) if args.out else Path("runs") / f"compare_{cfg.name}"
        launcher = make_launcher(args, out)
        cells = expand_grid(args.config, args.fusions, args.set_grid, args.set)
        seeds = replicates(parse_seeds(args.seeds), args.folds)
        print(f"{len(cells)} cells x {len(seeds)} runs ({f'{args.folds} folds x ' if args.folds else ''}"
              f"{len({r.seed for r in seeds})} seeds) -> {out}")
        with claim(out, marker=False):  # one compare per output folder
            write_text_atomic(out / "command.txt", command + "\n")
            if args.tune:
                from fusionzoo.compare.tuned import tune_cells

                tune_cells(args.config, cells, seeds[0], out, args.tune_trials, launcher)
            statuses = run_grid(args.config, cells, seeds, out, launcher=launcher)
        root = out
    runs = collect_runs(root)
    if not runs:
        print(f"error: no finished run (metrics.json) under {root}", file=sys.stderr)
        return 2
    board = build_leaderboard(runs, statuses, reference=args.reference)
    from fusionzoo.bench import machine_tag

    header = [f"Command: `{command}`", ""] + ([f"Leaderboard rebuilt with `{rebuilt}`.", ""] if rebuilt else [])
    from fusionzoo.compare.tuned import tuning_header

    header += tuning_header(root) + [f"Machine: {machine_tag('cpu')}, torch {torch.__version__}."]
    paths = write_leaderboard(board, out, title=f"Leaderboard: {out.name}", header_lines=header)
    print((out / "leaderboard.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _done_line(summary: dict) -> str:
    """One line: the selection and the test metrics at the selected checkpoint (rank 0 has them)."""
    if summary["selected_epoch"] is None:
        return f"done: {summary['run_dir']} (no epoch trained)"
    headline = ("accuracy", "macro_f1", "mean_R@1", "mAP", "micro_f1", "mae", "rmse", "pearson_r")
    shown = {k: v for k, v in (summary["test"] or {}).items() if k in headline or "zero_shot" in k}
    metrics = "  ".join(f"test {k} {v:.4f}" for k, v in shown.items())
    metric = summary["select_metric"]
    chosen = f"epoch {summary['selected_epoch']} ({summary['select']}, val {metric} {summary['val'][metric]:.4f})"
    return f"done: {summary['run_dir']}  {chosen}  {metrics}  ({summary['train_seconds']:.1f} s)"


def _parse_noise(items: Sequence[str]) -> dict[str, float]:
    noise = {}
    for item in items:
        for part in item.split(","):
            m, sep, level = part.partition("=")
            if not sep:
                raise ConfigError(f"--noise {part!r}: expected MODALITY=LEVEL, e.g. audio=0.5")
            noise[m.strip()] = _number(level, f"--noise {part}")
    return noise


def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text.strip()!r} is not a number") from None


def _eval(args: argparse.Namespace) -> int:
    from fusionzoo.training import evaluate_run
    from fusionzoo.training.robustness import condition_name

    missing = [m for item in args.missing for m in item.split(",") if m]
    levels = [_number(v, "--levels") for v in args.levels.split(",")]
    noise = _parse_noise(args.noise)
    result = evaluate_run(args.run, missing=missing, noise=noise, levels=levels)
    print(f"checkpoint: {result['checkpoint']}")
    print(f"written to: {Path(result['checkpoint']).parent.parent / 'eval' / condition_name(missing, noise, levels)}")
    if result["missing"] or result["noise"]:
        print(f"condition: missing {result['missing'] or 'none'}, noise {result['noise'] or 'none'}")
    metric = result.get("metric", "accuracy")
    names = [k for k in result["subsets"][0] if k not in ("modalities", "n")]
    show = lambda k, v: f"{100 * v:.1f}%" if k == "accuracy" else f"{v:.4f}"  # noqa: E731
    rows = [[" + ".join(r["modalities"])] + [show(k, r[k]) for k in names] for r in result["subsets"]]
    print(format_table(["modalities seen", *names], rows))
    curves = result["robustness"]
    levels = [p["level"] for p in next(iter(curves.values()))]
    print(f"\n{metric} as noise grows on one modality:")
    print(format_table(["noise on"] + [str(v) for v in levels], [[m] + [show(metric, p[metric]) for p in pts] for m, pts in curves.items()]))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from fusionzoo.training.explain import explain_run, render_summary

    summary = explain_run(args.run, split=args.split, out=args.out, samples=args.samples, value=args.value, batch_size=args.batch_size)
    out = Path(args.out) if args.out else Path(summary["run"]) / "explain" / args.split
    print(render_summary(summary).rstrip())
    print(f"\nwritten to: {out} (shapley.csv, summary.md, summary.json, plots)")
    return 0


def _csv(text: str, kind=str) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def _bench(args: argparse.Namespace) -> int:
    from fusionzoo.bench import SuiteOptions, machine_tag, run_suite

    if not (args.encoders or args.fusions or args.models):
        print("error: choose what to time: --fusions PATTERN, --encoders PATTERN and/or --models CONFIG ...", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available on this machine: GPU benchmarks skipped")
        return 0
    opts = SuiteOptions(
        encoders=args.encoders, fusions=args.fusions, models=args.models, batch_sizes=_csv(args.batch_sizes, int),
        device=args.device, dtypes=_csv(args.dtypes), compile=args.compile, channels_last=args.channels_last,
        modality_sweep=_csv(args.modality_sweep, int), missing_sweep=_csv(args.missing_sweep, float),
        min_time=args.min_time, memory=not args.no_memory, exclude=_csv(args.exclude),
    )
    out = Path(args.out) if args.out else Path("benchmarks") / "results" / machine_tag(args.device)
    command = "fusionzoo bench " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "fusionzoo bench (from Python)"
    run_suite(opts, out, args.name, command)
    return 0


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time encoders, fusion blocks and models against the measured matmul rate")
    p.add_argument("--encoders", default=None, metavar="PATTERN", help="fnmatch patterns over encoder names (comma-separated)")
    p.add_argument("--exclude", default="", metavar="PATTERNS", help="comma-separated fnmatch patterns of encoder and fusion names to leave out")
    p.add_argument("--fusions", default=None, metavar="PATTERN", help="fnmatch patterns over fusion names (comma-separated)")
    p.add_argument("--models", nargs="*", default=[], metavar="CONFIG", help="model / experiment configs")
    p.add_argument("--batch-sizes", default="256", help="comma-separated batch sizes (a sweep when several)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtypes", default="float32", help="float32 and/or bfloat16 (autocast; CUDA only)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (compile time reported)")
    p.add_argument("--channels-last", action="store_true", help="also time CNN encoders in channels_last (CUDA)")
    p.add_argument("--modality-sweep", default="", help="fusion cost for these numbers of modalities, e.g. 2,4,8")
    p.add_argument("--missing-sweep", default="", help="fusion time at these missing-modality rates, e.g. 0,0.5")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per measurement")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--out", default=None, help="default: benchmarks/results/<machine-tag>")
    p.add_argument("--name", default="bench", help="file name stem of the results")
    p.set_defaults(func=_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionzoo", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fusionzoo {fusionzoo.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also FUSIONZOO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered entries as a table")
    p.add_argument("kind", nargs="?", choices=list(REGISTRIES), help="one registry (default: all)")
    p.add_argument("--pattern", default="*", help="fnmatch pattern over names, e.g. '*attention*'")
    p.set_defaults(func=_list)

    p = sub.add_parser("info", help="describe a registry entry, or build a config and run one forward pass")
    p.add_argument("target", help="a registry name or a YAML config path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=_info)

    p = sub.add_parser("train", help="train a config (under torchrun: on every process)")
    p.add_argument("config", help="a YAML experiment config (model + data + train)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run directory that already holds a run")
    p.add_argument("--seeds", default=None, metavar="0,1,2", help="one run per seed under RUN/seed-K and an aggregate (mean, std, 95%% CI)")
    p.add_argument("--folds", type=int, default=None, metavar="K",
                   help="K-fold cross-validation (data.folds): one run per fold and seed under RUN/fold-F/seed-S and an aggregate")
    p.add_argument("--evaluate", action="store_true", help="then evaluate under every modality subset and noise level (eval/)")
    p.set_defaults(func=_train)

    p = sub.add_parser("compare", help="train a grid of fusion blocks / settings over seeds and write a leaderboard")
    p.add_argument("config", nargs="?", default=None, help="the base experiment config")
    p.add_argument("--fusions", default=None, metavar="PATTERNS", help="fusion blocks, comma-separated fnmatch patterns ('*': all)")
    p.add_argument("--set-grid", action="append", default=[], metavar="KEY=V1,V2", help="a grid axis over a config key, repeatable")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every cell, repeatable")
    p.add_argument("--seeds", default="0,1,2", help="seeds per cell (default 0,1,2)")
    p.add_argument("--folds", type=int, default=None, metavar="K", help="K-fold cross-validation: every cell on every fold and seed (data.folds)")
    p.add_argument("--jobs", type=int, default=1, help="cells trained at a time (each its own process)")
    p.add_argument("--out", default=None, help="default: runs/compare_<config name>")
    p.add_argument("--collect", default=None, metavar="DIR", help="only build the leaderboard from the finished runs under DIR")
    p.add_argument("--reference", default=None, metavar="CELL", help="reference of effective robustness (default: weighted_late)")
    p.add_argument("--tune", action="store_true", help="tune every cell over the config's tune.space first (the same budget each); its runs use the best values")
    p.add_argument("--tune-trials", type=int, default=None, metavar="N", help="trials per cell (default: tune.trials, else 20)")
    add_launcher_arguments(p)
    p.set_defaults(func=_compare)

    _add_tune_parser(sub)
    _add_run_tool_parsers(sub)
    _add_bench_parser(sub)
    _add_data_parser(sub)
    return parser


def _add_tune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search the config's tune.space with Optuna (TPE, pruning on validation), each trial a run")
    p.add_argument("config", help="a YAML experiment config with a tune: {space: ...} section")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--trials", type=int, default=None, help="trials of the study, all workers together (default: tune.trials, else 20)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="start no trial after this long")
    p.add_argument("--pruner", default=None, choices=["median", "hyperband", "none"], help="default: tune.pruner, else median")
    p.add_argument("--out", default=None, help="default: runs/tune_<config name>")
    p.add_argument("--storage", default=None, metavar="URL", help="a database URL shared by several workers (default: OUT/study.db)")
    p.add_argument("--study", default=None, metavar="NAME", help="the study's name in the storage (default: the config's name)")
    p.add_argument("--jobs", type=int, default=1, help="workers on the study (each a process, a Ray task or a Slurm job; default 1: this process)")
    p.add_argument("--no-report", action="store_true", help="a worker's part only: run trials, leave the report to the command that launched it")
    add_launcher_arguments(p)
    p.set_defaults(func=_tune)


def _tune(args: argparse.Namespace) -> int:
    from fusionzoo.tuning.study import tune

    out = args.out or Path("runs") / f"tune_{load_config(args.config, args.set).name}"
    launcher = make_launcher(args, out)
    launched = launcher if (args.jobs > 1 or args.launcher != "local") else None
    tune(args.config, out, overrides=args.set, trials=args.trials, timeout=args.timeout, storage=args.storage,
         study_name=args.study, pruner=args.pruner, launcher=launched, report=not args.no_report)
    return 0


def add_launcher_arguments(p: argparse.ArgumentParser) -> None:
    """Where the work runs (fusionzoo.launch): this machine, a Ray cluster, Slurm."""
    g = p.add_argument_group("launcher (where the runs go: this machine, a Ray cluster, Slurm through submitit)")
    g.add_argument("--launcher", default="local", choices=["local", "ray", "slurm"], help="default: local processes")
    g.add_argument("--cpus-per-task", type=int, default=None, help="threads of each run (default: this machine's cores / --jobs)")
    g.add_argument("--gpus-per-task", type=float, default=0, help="GPUs each Ray task or Slurm job asks for")
    g.add_argument("--ray-address", default=None, metavar="ADDRESS", help="join a running Ray cluster (auto, ray://head:10001); default: start a local one")
    g.add_argument("--slurm-partition", default=None)
    g.add_argument("--slurm-time", type=int, default=240, metavar="MINUTES", help="each job's time limit (default 240)")
    g.add_argument("--slurm-cluster", default=None, choices=["slurm", "local", "debug"],
                   help="submitit's executor (default: slurm where sbatch is found, else local: this machine, the same code path)")


def make_launcher(args: argparse.Namespace, out: str | Path):
    from fusionzoo.launch import Launcher

    return Launcher(args.launcher, jobs=args.jobs, cpus=args.cpus_per_task, gpus=args.gpus_per_task, address=args.ray_address,
                    partition=args.slurm_partition, time_min=args.slurm_time, folder=Path(out) / "slurm", cluster=args.slurm_cluster)


def _add_run_tool_parsers(sub: argparse._SubParsersAction) -> None:
    """The commands that work on a trained run: eval, explain, embed, export, ensemble."""
    p = sub.add_parser("eval", help="evaluate a run under every subset of modalities and growing noise")
    p.add_argument("run", help="a run directory (its selected checkpoint) or a checkpoint folder")
    p.add_argument("--missing", action="append", default=[], metavar="M1,M2", help="modalities to remove")
    p.add_argument("--noise", action="append", default=[], metavar="M=LEVEL", help="noise added to a modality")
    p.add_argument("--levels", default="0,0.25,0.5,1,2", help="noise levels of the robustness curves")
    p.set_defaults(func=_eval)

    p = sub.add_parser("explain", help="each modality's Shapley value for every prediction of a split (exact over all subsets)")
    p.add_argument("run", help="a run directory (its selected checkpoint) or a checkpoint folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", default=None, help="output folder (default: <run>/explain/<split>)")
    p.add_argument("--samples", type=int, default=None, help="explain the first N samples of the split only")
    p.add_argument("--value", default=None, choices=("logit", "prob", "log_prob", "output"),
                   help="what is explained: the predicted class's (each label's) logit, prob or log_prob (default logit); "
                   "a regression target's output")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=_explain)

    p = sub.add_parser("embed", help="write a run's encoder features of each split (safetensors) for feature transfer")
    p.add_argument("run", help="a run directory (its selected checkpoint) or a checkpoint folder")
    p.add_argument("--split", default="train,val,test", help="comma-separated splits (default: all three)")
    p.add_argument("--out", default=None, help="default: RUN/features")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=_embed)

    p = sub.add_parser("export", help="export a trained model for serving (torch.export .pt2 or ONNX), presence masks as inputs")
    p.add_argument("source", help="a run directory, a saved model folder or a shipped model's name")
    p.add_argument("--format", default="pt2", choices=["pt2", "onnx"], help="onnx needs: pip install 'fusionzoo[export]'")
    p.add_argument("--out", required=True, help="the file to write (model.pt2, model.onnx)")
    p.add_argument("--shape", action="append", default=[], metavar="M=D1,D2", help="one sample's input shape for modality M (default: the card's)")
    p.set_defaults(func=_export)

    p = sub.add_parser("ensemble", help="evaluate the weighted average of separately trained runs' predictions")
    p.add_argument("runs", nargs="+", help="run directories; the first one's data is used (it must hold every run's modalities)")
    p.add_argument("--weights", default=None, metavar="0.5,0.5", help="one weight per run (default: equal)")
    p.add_argument("--fit-weights", default=None, choices=["val"], help="fit the weights on the validation split")
    p.add_argument("--combine", default="probs", choices=["probs", "logits"], help="average probabilities or logits")
    p.add_argument("--out", default=None, help="default: FIRST_RUN/ensemble")
    p.set_defaults(func=_ensemble)


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="check a config's data; write it as WebDataset shards; write the avdigits example as a manifest folder")
    verbs = data.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("check", help="read every row of the three splits: sizes, classes, missing cells, skipped rows")
    p.add_argument("config", help="a YAML experiment config with a data: section")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.set_defaults(func=_data_check)
    p = verbs.add_parser("shard", help="write a config's table data (manifest, hf_dataset) as WebDataset shards and their index")
    p.add_argument("config", help="a YAML experiment config with a data: section")
    p.add_argument("out", help="a new folder: {train,val,test}-NNNNNN.tar and shards.json")
    p.add_argument("--shard-size", type=int, required=True, help="samples per shard")
    p.add_argument("--seed", type=int, default=0, help="the order rows are written in")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.set_defaults(func=_data_shard)
    p = verbs.add_parser("export-avdigits", help="write avdigits as PNG + WAV + a noisy transcript column, with items.csv")
    p.add_argument("out", help="a new folder")
    p.add_argument("--root", default=None, help="the avdigits folder (default: $FUSIONZOO_AVDIGITS or ../shared/datasets/avdigits)")
    p.add_argument("--difficulty", default="clean", choices=["clean", "hard"])
    p.add_argument("--blank", type=float, default=0.0, help="fraction of rows with one modality blanked (e.g. 0.2)")
    p.add_argument("--text-noise", type=float, default=0.3, help="probability that the transcript names a wrong digit")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_export_avdigits)


def _data_check(args: argparse.Namespace) -> int:
    from fusionzoo.config import build_dataset

    cfg = load_config(args.config, args.set)
    train_set = build_dataset(cfg, "train")
    fitted = getattr(train_set, "fitted", None)
    sets = {"train": train_set, "val": build_dataset(cfg, "val", fitted), "test": build_dataset(cfg, "test", fitted)}
    modalities = list(getattr(train_set, "modalities", ()))
    rows = []
    for split, ds in sets.items():
        records = getattr(ds, "records", None)
        missing = [f"{sum(r.values[m] is None for r in records) / len(records):.0%}" if records else "-" for m in modalities]
        rows.append([split, str(len(ds)), *missing, str(len(getattr(ds, "skipped", [])))])
    print(format_table(["split", "samples", *(f"{m} missing" for m in modalities), "skipped rows"], rows))
    print(f"task: {getattr(train_set, 'task', 'multiclass')}")
    if getattr(train_set, "classes", None):
        print(f"classes ({len(train_set.classes)}): {', '.join(map(str, train_set.classes[:20]))}{' ...' if len(train_set.classes) > 20 else ''}")
    for m, vocab in getattr(train_set, "vocabs", {}).items():
        print(f"{m} vocabulary: {len(vocab)} words (fitted on train)")
    for split, ds in sets.items():
        for row in getattr(ds, "skipped", [])[:5]:
            print(f"skipped ({split}): line {row['line']}, column {row['column']!r}: {row['error']}")
    return 0


def _data_shard(args: argparse.Namespace) -> int:
    from fusionzoo.config import build_from_section
    from fusionzoo.data.shards import write_shards
    from fusionzoo.registry import DATASETS

    cfg = load_config(args.config, args.set)
    section = cfg.require("data", "to write shards")
    try:
        index = write_shards(section, args.out, args.shard_size, args.seed, create=lambda s, **d: build_from_section(DATASETS, s, "data", cfg.origin, **d))
    except ValueError as e:
        raise ConfigError(f"{args.config}: {e}" if not str(e).startswith(cfg.origin) else str(e)) from None
    splits = json.loads(index.read_text())["splits"]
    for split, part in splits.items():
        skipped = f", {part['skipped']} rows skipped (on_error: skip)" if part["skipped"] else ""
        print(f"{split}: {sum(part['samples'])} samples in {len(part['shards'])} shards{skipped}")
    print(f"wrote {index}; train on it with data: {{name: webdataset, path: {index}}}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from fusionzoo.training import embed_run

    for path in embed_run(args.run, _csv(args.split), args.out, args.batch_size):
        print(f"wrote {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from fusionzoo.export import ServingModel, check_onnx, example_inputs, export_onnx, export_pt2
    from fusionzoo.hub import from_pretrained, input_shapes

    if Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: a folder; give the file to write (model.{args.format})")
    model = from_pretrained(args.source)
    shapes = input_shapes(args.source, model) or {}
    for item in args.shape:
        m, sep, dims = item.partition("=")
        if m not in model.modalities:
            raise ConfigError(f"--shape {item}: {m!r} is not a modality of the model (it has {', '.join(model.modalities)})")
        try:
            shapes[m] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise ConfigError(f"--shape {item}: expected MODALITY=D1,D2,... with positive ints, e.g. audio=8000") from None
        if not sep or not shapes[m] or min(shapes[m]) < 1:
            raise ConfigError(f"--shape {item}: expected MODALITY=D1,D2,... with positive ints, e.g. audio=8000")
    if args.format == "pt2":
        path = export_pt2(model, args.out, shapes)
    else:
        try:
            path = export_onnx(model, args.out, shapes)
        except ImportError as e:  # the optional extra is missing: a user error, one line
            print(f"error: {e}", file=sys.stderr)
            return 2
        diff = check_onnx(path, model, example_inputs(ServingModel(model), shapes=shapes))
        print(f"ONNX Runtime vs eager on random inputs: max abs difference {diff:.1e}")
    print(f"wrote {path}; inputs: {', '.join(ServingModel(model).input_names)} (per-sample shapes {shapes or 'of the encoders examples'}); output: logits")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from fusionzoo.training import ensemble_runs

    weights = _csv(args.weights, float) if args.weights else None
    result = ensemble_runs(args.runs, weights=weights, combine=args.combine, fit=args.fit_weights, out=args.out)
    print(f"weights: {', '.join(f'{w:.2f}' for w in result['weights'])}" + (" (fitted on val)" if result["fitted_on"] else ""))
    head = ["modalities seen", "ensemble", *(f"run {i + 1}" for i in range(len(args.runs)))]
    show = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    rows = [[" + ".join(r["modalities"]), show(r["accuracy"]), *(show(a) for a in r["runs"])] for r in result["test"]]
    print("test accuracy:")
    print(format_table(head, rows))
    return 0


def _export_avdigits(args: argparse.Namespace) -> int:
    from fusionzoo.data.export import export_avdigits

    path = export_avdigits(args.out, root=args.root, difficulty=args.difficulty, blank=args.blank, text_noise=args.text_noise, seed=args.seed)
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. A user error (a bad config, file or run folder) is one line on stderr and exit
    code 2, a diverged training run one line and exit code 1; ``--debug`` or ``FUSIONZOO_DEBUG=1``
    shows the traceback instead."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, ConnectionError, RunFolderError, TrainingDiverged,
            MissingExtraError) as e:
        if args.debug or os.environ.get("FUSIONZOO_DEBUG") == "1":
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)  # ConfigError and CheckpointError are ValueErrors
        return 1 if isinstance(e, TrainingDiverged) else 2
    except OSError as e:  # a full or read-only disk, a quota: where it happened, in one line
        if args.debug or os.environ.get("FUSIONZOO_DEBUG") == "1" or e.errno not in DISK_ERRORS and e.errno is not None:
            raise
        where = f" (writing into {Path(e.filename).parent})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


#: The ``OSError`` s that are the machine's state, not a bug: shown as one line.
DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EFBIG)


def _one_line(error: BaseException) -> str:
    """The message; for an error re-raised from a ``DataLoader`` worker (which wraps it in the
    worker's traceback), the original message only."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text
