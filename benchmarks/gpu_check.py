"""The device check: everything fusionzoo claims about GPUs, on one GPU, in one command, offline.

    make gpu-check                    # = python3 benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --budget 480 --out DIR

Without CUDA it says so in one line and exits 0 (a dry run costs nothing). With it, in at most
``--budget`` seconds (default 8 minutes) all told, each step in its own process with its own time
limit, a step that fails or runs out of time recorded and the next one started:

1. what is missing: every package the project pins, checked by import; the missing ones are named
   with the pinned wheels to bring (nothing is installed: the machine has no network);
2. ``pytest -m gpu``: the fusion blocks and encoders on CUDA against the CPU (float32, bf16
   autocast), a quickstart run with bf16 autocast and ``torch.compile``, its resume and evaluation,
   an avdigits run, an export traced on CUDA;
3. ``fusionzoo bench --device cuda``: every fusion block, encoder (but the foundation ones, which
   need local model folders) and the quickstart model at batch 256 and 1024, float32 and bf16,
   with the bf16 and float32 matmul rates measured in the same run; then the fusion blocks compiled;
4. training throughput (samples/s): the quickstart and, with the avdigits data, an avdigits config,
   5 epochs each on CUDA with bf16 autocast.

Results go to ``benchmarks/results/gpu-<device name>/`` (or ``--out``): ``env.json`` (GPU, driver,
CUDA, torch), each step's log, the bench tables, ``train_speed.json`` and ``summary.md``. The
project's own code is imported from this checkout (``PYTHONPATH``), so nothing is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Import names of the pinned distributions whose names differ.
IMPORT_NAMES = {"pyyaml": "yaml", "open_clip_torch": "open_clip", "mlflow-skinny": "mlflow", "huggingface_hub": "huggingface_hub",
                "pycparser": "pycparser", "mkdocs-material": "material", "mkdocstrings-python": "mkdocstrings_handlers"}


def missing_packages() -> list[str]:
    """``name==version`` of every pinned requirement that does not import here."""
    missing = []
    for file in ("pinned.txt", "extras.txt"):
        for line in (ROOT / "requirements" / file).read_text().splitlines():
            line = line.split("#")[0].strip()
            if not line or "==" not in line:
                continue
            name = line.split("==")[0]
            module = IMPORT_NAMES.get(name, name.replace("-", "_").lower())
            if importlib.util.find_spec(module) is None:
                missing.append(line)
    return missing


def device_name() -> str:
    import torch

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def environment() -> dict:
    import torch

    props = torch.cuda.get_device_properties(0)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        smi = ""
    return {"gpu": torch.cuda.get_device_name(0), "capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1),
            "nvidia_smi": smi, "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": sys.version.split()[0]}


def run_step(name: str, command: list[str], out: Path, limit: float) -> dict:
    """One step as its own process, logged to ``out/<name>.log``, stopped after ``limit`` seconds."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "PYTHONUNBUFFERED": "1", "CI": "1"}
    log = out / f"{name}.log"
    start = time.monotonic()
    with log.open("w") as f:
        try:
            code = subprocess.run(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=max(1.0, limit)).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = time.monotonic() - start
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    result = {"step": name, "exit": code, "seconds": round(seconds, 1), "last": lines[-1] if lines else ""}
    print(f"{name}: {'ok' if code == 0 else f'exit {code}'} in {seconds:.0f} s  {result['last'][:150]}", flush=True)
    return result


def train_speed(config: str, overrides: list[str], run_dir: Path) -> dict:
    """Samples/s of the training epochs of one run on CUDA (epochs after the first: warm)."""
    from fusionzoo.training import train

    summary = train(config, run_dir=run_dir, overwrite=True, overrides=["train.device=cuda", "train.amp=true", *overrides], log=False)
    history = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    warm = [h["samples_per_s"] for h in history[1:]] or [history[0]["samples_per_s"]]
    return {"config": config, "overrides": overrides, "samples_per_s": sorted(warm)[len(warm) // 2], "epochs": len(history),
            "test": summary["test"], "device": summary["device"]}


def steps(out: Path) -> list[tuple[str, list[str], float]]:
    """``(name, command, share of the budget)`` in the order they run."""
    py = sys.executable
    bench = [py, "-m", "fusionzoo", "bench", "--device", "cuda", "--out", str(out), "--min-time", "0.2"]
    return [
        ("pytest_gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/"], 0.30),
        ("bench_eager", [*bench, "--fusions", "*", "--encoders", "*", "--exclude", "hf_*,timm,open_clip_*", "--models",
                         "configs/experiments/quickstart.yaml", "--batch-sizes", "256,1024", "--dtypes", "float32,bfloat16",
                         "--channels-last", "--name", "gpu_eager"], 0.30),
        ("bench_compiled", [*bench, "--fusions", "*", "--batch-sizes", "1024", "--dtypes", "bfloat16", "--compile", "--name", "gpu_compiled"], 0.15),
        ("train_speed", [py, str(Path(__file__).resolve()), "--train-speed", "--out", str(out)], 0.20),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=480, help="seconds for everything (default 480)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--train-speed", action="store_true", help=argparse.SUPPRESS)  # step 4, in its own process
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu-check: needs torch (not installed here); nothing run")
        return 0
    if not torch.cuda.is_available():
        print("gpu-check: needs CUDA (no GPU is visible here); nothing run")
        return 0
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu-{device_name()}"
    out.mkdir(parents=True, exist_ok=True)
    if args.train_speed:
        return _train_speeds(out)
    started = time.monotonic()
    missing = missing_packages()
    env = environment() | {"missing": missing}
    (out / "env.json").write_text(json.dumps(env, indent=2))
    print(f"gpu-check on {env['gpu']} (torch {env['torch']}, CUDA {env['cuda']}) -> {out}")
    if missing:
        print(f"missing here (bring these wheels): {' '.join(missing)}")
    results = []
    for name, command, share in steps(out):
        left = args.budget - (time.monotonic() - started)
        if left < 10:
            results.append({"step": name, "exit": "no time left", "seconds": 0, "last": ""})
            continue
        results.append(run_step(name, command, out, min(share * args.budget, left)))
    _summary(out, env, results, time.monotonic() - started)
    return 0


def _train_speeds(out: Path) -> int:
    runs = [("configs/experiments/quickstart.yaml", ["train.epochs=5"])]
    avdigits = Path(os.environ.get("FUSIONZOO_AVDIGITS", ROOT.parent / "shared" / "datasets" / "avdigits"))
    if (avdigits / "manifest.csv").is_file():
        runs.append(("configs/experiments/avdigits_concat_clean.yaml", [f"data.root={avdigits}", "train.epochs=5"]))
    speeds = []
    for config, overrides in runs:
        speeds.append(train_speed(str(ROOT / config), overrides, out / "runs" / Path(config).stem))
        print(f"{config}: {speeds[-1]['samples_per_s']:.0f} samples/s", flush=True)
    (out / "train_speed.json").write_text(json.dumps(speeds, indent=2))
    return 0


def _summary(out: Path, env: dict, results: list[dict], seconds: float) -> None:
    lines = [f"# GPU check: {env['gpu']}", "", f"`make gpu-check` ({seconds:.0f} s), torch {env['torch']}, CUDA {env['cuda']}, "
             f"driver and memory `{env['nvidia_smi']}`.", ""]
    if env["missing"]:
        lines += [f"Missing on the machine (steps needing them fail): `{' '.join(env['missing'])}`.", ""]
    lines += ["| step | exit | seconds | last line |", "|---|---|---:|---|"]
    lines += [f"| {r['step']} | {r['exit']} | {r['seconds']} | {r['last'][:120].replace('|', '/')} |" for r in results]
    speed = out / "train_speed.json"
    if speed.is_file():
        lines += ["", "| training | samples/s |", "|---|---:|"]
        lines += [f"| {Path(s['config']).stem} | {s['samples_per_s']:.0f} |" for s in json.loads(speed.read_text())]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'summary.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
