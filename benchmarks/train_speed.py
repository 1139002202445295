"""Training throughput of real-data configs, this checkout against an older commit, in one run.

    python benchmarks/train_speed.py                         # avdigits_concat_hard vs the baseline commit
    python benchmarks/train_speed.py --baseline HEAD~3 --rounds 5 --configs configs/experiments/avdigits_late_clean.yaml
    python benchmarks/train_speed.py --seeds 0,1,2           # also: full trainings, test accuracy per seed

The baseline's package and configs are extracted with ``git archive`` into a temporary folder; each
code trains its own revision of the config (what a user running the same command gets); every
measurement is its own process (``PYTHONPATH`` picks the code), and the two codes alternate round by
round, so drift of the machine hits both alike. A measurement trains ``--epochs`` epochs through the public
``fusionzoo.training.train`` (loader, modality dropout, optimizer and all) and reports the median
samples/s of the epochs after the first (the first warms the allocator up). Both codes start from the
same seed, and the script reports how far their weights are apart after those epochs.

``--seeds`` trains the config to its end under both codes and reports test accuracy per seed and
the mean with a 95% t-interval: the "same results" check for changes that are not bit-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "2031a7a"  # main before the performance work of issue 16
DEFAULT_CONFIGS = ["configs/experiments/avdigits_concat_hard.yaml"]


def extract(rev: str, dest: Path) -> Path:
    """The ``fusionzoo`` package and the ``configs`` of ``rev`` under ``dest``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "fusionzoo", "configs"], check=True, capture_output=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def worker(args: argparse.Namespace) -> None:
    """Train in this process and print one JSON line: samples/s per epoch, test accuracy, weights."""
    import torch

    import fusionzoo as fz
    from fusionzoo.training import train

    torch.set_num_threads(args.threads)
    overrides = [f"seed={args.seed}", "train.progress=false"] + ([f"train.epochs={args.worker_epochs}"] if args.worker_epochs else [])
    run_dir = Path(args.run_dir)
    summary = train(Path(args.code) / args.config, run_dir, overwrite=True, overrides=overrides, log=False)
    history = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    from safetensors.torch import load_file

    last = (run_dir / "checkpoints" / "last").read_text().strip()  # the pointer file names the last epoch's folder
    torch.save(load_file(run_dir / "checkpoints" / last / "model.safetensors"), run_dir / "weights.pt")
    print(json.dumps({
        "code": fz.__file__,
        "samples_per_s": [h["samples_per_s"] for h in history],
        "test": summary.get("test", {}),
        "weights": str(run_dir / "weights.pt"),
    }))


def measure(code: Path, config: str, run_dir: Path, threads: int, epochs: int | None, seed: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", "--code", str(code), "--config", config, "--run-dir", str(run_dir),
           "--threads", str(threads), "--seed", str(seed)] + (["--worker-epochs", str(epochs)] if epochs else [])
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{code}: {shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["code"]).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"the worker imported {result['code']}, not the code under {code}")
    return result


def weight_distance(a: str, b: str) -> float:
    import torch

    sa, sb = torch.load(a), torch.load(b)
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


def t_interval(values: list[float]) -> tuple[float, float]:
    from fusionzoo.compare.stats import mean_ci

    ci = mean_ci(values)
    return ci["mean"], ci["half_width"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", default="", help="comma-separated seeds for full trainings under both codes")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker-epochs", type=int, default=None, help=argparse.SUPPRESS)  # None: the config's
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    sys.path.insert(0, str(ROOT))
    from fusionzoo.bench import machine_info, machine_tag, script_command, write_report

    tmp = Path(tempfile.mkdtemp(prefix="fusionzoo-train-speed-"))
    codes = {"baseline": extract(args.baseline, tmp / "baseline"), "current": ROOT}
    base_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], capture_output=True, text=True, check=True).stdout.strip()
    results = []
    for config in args.configs:
        name = Path(config).stem
        speeds: dict[str, list[float]] = {c: [] for c in codes}
        distance = None
        for r in range(args.rounds):
            runs = {}
            for code, path in (codes.items() if r % 2 == 0 else reversed(codes.items())):
                runs[code] = measure(path, config, tmp / f"{name}-{code}", args.threads, args.epochs, 0)
                speeds[code].append(statistics.median(runs[code]["samples_per_s"][1:]))
                print(f"{name} round {r + 1} {code}: {speeds[code][-1]:.0f} samples/s", flush=True)
            distance = weight_distance(runs["baseline"]["weights"], runs["current"]["weights"])
        record = {
            "config": config,
            "epochs_timed": args.epochs - 1,
            "samples_per_s": speeds,
            "median_samples_per_s": {c: statistics.median(v) for c, v in speeds.items()},
            "max_abs_weight_difference": distance,
        }
        record["speedup"] = record["median_samples_per_s"]["current"] / record["median_samples_per_s"]["baseline"]
        seeds = [int(s) for s in args.seeds.split(",") if s]
        if seeds:
            acc = {c: [] for c in codes}
            for seed in seeds:
                for code, path in codes.items():
                    res = measure(path, config, tmp / f"{name}-{code}-s{seed}", args.threads, None, seed)
                    acc[code].append(100 * res["test"]["accuracy"])
                    print(f"{name} seed {seed} {code}: test accuracy {acc[code][-1]:.1f}%", flush=True)
            record["test_accuracy"] = acc
            record["test_accuracy_ci"] = {c: t_interval(v) for c, v in acc.items()}
        results.append(record)

    payload = {"machine": machine_info(), "baseline": base_rev, "command": script_command("train_speed.py", argv), "results": results}
    write_report(args.out or ROOT / "benchmarks" / "results" / machine_tag(), "train_speed", payload, render(payload))
    return 0


def render(payload: dict) -> str:
    lines = [
        f"# Training throughput: this checkout vs {payload['baseline']}",
        "",
        f"`{payload['command']}` on {payload['machine']['cpu']}, torch {payload['machine']['torch']}; "
        "each number the median over rounds of the median epoch after the first, both codes alternating.",
        "",
        "| config | baseline samples/s | current samples/s | speed-up | max weight difference after the timed epochs |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in payload["results"]:
        m = r["median_samples_per_s"]
        lines.append(f"| `{Path(r['config']).stem}` | {m['baseline']:.0f} | {m['current']:.0f} | {r['speedup']:.2f}x | {r['max_abs_weight_difference']:.2g} |")
    for r in payload["results"]:
        if "test_accuracy" in r:
            lines += ["", f"Test accuracy of `{Path(r['config']).stem}` trained to the end, seeds as run:", ""]
            for code, values in r["test_accuracy"].items():
                mean, half = r["test_accuracy_ci"][code]
                lines.append(f"- {code}: {', '.join(f'{v:.1f}' for v in values)} -> {mean:.1f} ± {half:.1f}%")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
