"""The fine-tuning recipe on split MNIST: a ResNet-18 trained on digits 0-4, its classifier replaced,
then trained on digits 5-9 from 10, 50 and 1000 labels per digit, five ways, over seeds.

    python benchmarks/workflow_finetune.py [--seeds 0,1,2] [--budgets 10,50,1000] [--runs DIR] [--out DIR]

* source: ``configs/experiments/mnist_source.yaml`` (trained once, seed 0);
* ``scratch``: the target config without ``init_from`` (every layer at the full learning rate);
* ``linear_probe``: the transferred trunk frozen, a new fusion layer and head trained;
* ``finetune``: everything trains, the trunk at 0.1x the learning rate (SGD, momentum 0.9);
* ``gradual``: as ``finetune``, the trunk unfrozen from the top, one stage per epoch (layer4 with the
  new classifier in epoch 1, then layer3, layer2, the rest);
* ``finetune_l2sp``: ``finetune`` with L2-SP (``regularize: {l2sp: 0.01}``) towards the source trunk.

Every run selects its epoch on 100 held-out training images per digit and is tested once on all
4861 test images of digits 5-9. Writes ``workflow_finetune.{json,md}`` (mean, std, 95% t-interval).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from fusionzoo.atomic import write_text_atomic
from fusionzoo.bench import machine_tag
from fusionzoo.compare.stats import mean_ci
from fusionzoo.config import load_config
from fusionzoo.training import train

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = {10: 30, 50: 15, 1000: 4}
STRATEGIES = ("scratch", "linear_probe", "gradual", "finetune", "finetune_l2sp")


def target_config(source: Path, budget: int, strategy: str, seed: int, avdigits: str):
    cfg = load_config(ROOT / "configs/experiments/mnist_target.yaml").to_dict()
    cfg["seed"] = seed
    cfg["data"].update(labels_per_class=budget, root=avdigits)
    t = cfg["train"]
    t["epochs"] = EPOCHS.get(budget, 10)
    t["init_from"]["path"] = str(source)
    if strategy == "scratch":
        del t["init_from"], t["lr_mult"]
    elif strategy == "linear_probe":
        t["strategy"] = "linear_probe"
    elif strategy == "gradual":
        t["strategy"] = "gradual"
        trunk = "encoders.visual.trunk."
        t["gradual_groups"] = [[trunk + "layer4*"], [trunk + "layer3*"], [trunk + "layer2*"], ["encoders.visual.*"]]
    elif strategy == "finetune_l2sp":
        t["regularize"] = {"l2sp": 0.01}
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budgets", default="10,50,1000")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--avdigits", default=os.environ.get("FUSIONZOO_AVDIGITS", str(ROOT.parent / "shared/datasets/avdigits")))
    parser.add_argument("--runs", type=Path, default=Path("runs/finetune"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "results" / machine_tag()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    source = args.runs / "source"
    started = time.perf_counter()
    if not (source / "metrics.json").is_file():
        cfg = load_config(ROOT / "configs/experiments/mnist_source.yaml").to_dict()
        cfg["data"]["root"] = args.avdigits
        train(cfg, run_dir=source, overwrite=True, log=False)
    source_metrics = json.loads((source / "metrics.json").read_text())
    print(f"source: test accuracy {source_metrics['test']['accuracy']:.4f} (digits 0-4)", flush=True)
    records = []
    for budget in [int(b) for b in args.budgets.split(",")]:
        for strategy in args.strategies.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                run = args.runs / f"budget-{budget}" / strategy / f"seed-{seed}"
                if not (run / "metrics.json").is_file():
                    train(target_config(source, budget, strategy, seed, args.avdigits), run_dir=run, overwrite=True, log=False)
                m = json.loads((run / "metrics.json").read_text())
                records.append({
                    "budget": budget, "strategy": strategy, "seed": seed, "test_accuracy": m["test"]["accuracy"],
                    "val_accuracy": m["val"]["accuracy"], "selected_epoch": m["selected_epoch"], "epochs": m["epochs"],
                    "train_seconds": m["train_seconds"],
                })
                print(f"labels/class {budget:5d}  {strategy:14s} seed {seed}  test {m['test']['accuracy']:.4f}  "
                      f"(epoch {m['selected_epoch']}/{m['epochs']}, {m['train_seconds']:.0f} s)", flush=True)
    table = {}
    for r in records:
        table.setdefault((r["budget"], r["strategy"]), []).append(r["test_accuracy"])
    summary = [{"budget": b, "strategy": s, **mean_ci(v)} for (b, s), v in table.items()]
    info = {
        "machine": machine_tag(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "command": "python benchmarks/workflow_finetune.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "source_test_accuracy": source_metrics["test"]["accuracy"], "wall_seconds": time.perf_counter() - started,
    }
    write_text_atomic(out / "workflow_finetune.json", json.dumps({"info": info, "summary": summary, "records": records}, indent=2))
    budgets = sorted({r["budget"] for r in records})
    lines = [
        f"# Fine-tuning on split MNIST ({info['machine']})", "",
        f"Command: `{info['command'].strip()}`; torch {info['torch']}. Source (digits 0-4, 1000 labels per digit) test "
        f"accuracy {100 * info['source_test_accuracy']:.2f}%. Target: digits 5-9, test accuracy (%) on all 4861 test images at the "
        "epoch selected on 500 held-out images; mean ± half-width of the 95% t-interval over seeds.", "",
        "| strategy | " + " | ".join(f"{b} labels/digit" for b in budgets) + " |", "|---|" + "---:|" * len(budgets),
    ]
    for s in dict.fromkeys(r["strategy"] for r in records):
        cells = []
        for b in budgets:
            st = next((x for x in summary if x["budget"] == b and x["strategy"] == s), None)
            cells.append("-" if st is None else f"{100 * st['mean']:.1f}" + (f" ± {100 * st['half_width']:.1f}" if st["half_width"] is not None else ""))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    write_text_atomic(out / "workflow_finetune.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
