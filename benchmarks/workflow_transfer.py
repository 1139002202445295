"""Transfer workflow: train the source task, then the few-label target task under each strategy and
from scratch; write the accuracy table.

    python benchmarks/workflow_transfer.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fusionzoo.atomic import write_text_atomic
from fusionzoo.bench import machine_tag
from fusionzoo.training import train

SOURCE, TARGET = "configs/experiments/transfer_source.yaml", "configs/experiments/transfer_target.yaml"
ARMS = {
    "scratch": ["train.init_from=null"],
    "linear_probe": ["train.strategy=linear_probe"],
    "finetune": ["train.strategy=finetune"],
    "gradual": ["train.strategy=gradual"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).parent / "results" / machine_tag()
    source = train(SOURCE, run_dir="runs/transfer_source", overwrite=True)
    results = {"source_test_accuracy": source["test"]["accuracy"], "arms": {}}
    for arm, overrides in ARMS.items():
        summary = train(TARGET, run_dir=f"runs/transfer_{arm}", overwrite=True, overrides=overrides)
        results["arms"][arm] = {
            "test_accuracy": summary["test"]["accuracy"],
            "selected_epoch": summary["selected_epoch"],
            "best_val_accuracy": summary["best_val"],
            "macro_f1": summary["test"]["macro_f1"],
        }
    results["command"] = "python benchmarks/workflow_transfer.py"
    write_text_atomic(out / "workflow_transfer.json", json.dumps(results, indent=2))
    lines = [
        "| target training (120 labels, 12 classes) | val accuracy (best) | selected epoch | test accuracy | test macro-F1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, r in results["arms"].items():
        lines.append(
            f"| {arm} | {100 * r['best_val_accuracy']:.1f}% | {r['selected_epoch']} | {100 * r['test_accuracy']:.1f}% | {r['macro_f1']:.3f} |"
        )
    text = "\n".join(lines) + f"\n\nSource task (8 classes, 3000 samples) test accuracy: {100 * results['source_test_accuracy']:.1f}%.\n"
    write_text_atomic(out / "workflow_transfer.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
