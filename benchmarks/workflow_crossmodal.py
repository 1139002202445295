"""Cross-modal workflows on AV digits and the synthetic data: alignment (retrieval, zero-shot),
image-to-speech distillation with 5 labels per digit, and multi-task weighting; writes the tables.

    python benchmarks/workflow_crossmodal.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fusionzoo.atomic import write_text_atomic
from fusionzoo.bench import machine_tag
from fusionzoo.training import evaluate_run, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).parent / "results" / machine_tag()
    results: dict = {"command": "python benchmarks/workflow_crossmodal.py"}

    align = train("configs/experiments/align_avdigits.yaml", run_dir="runs/align_avdigits", overwrite=True)
    results["alignment"] = align["test"]

    teacher = train("configs/experiments/distill_teacher_visual.yaml", run_dir="runs/distill_teacher_visual", overwrite=True)
    student = train("configs/experiments/distill_student_audio.yaml", run_dir="runs/distill_student_audio", overwrite=True)
    alone = train("configs/experiments/distill_student_audio.yaml", run_dir="runs/distill_labels_only", overwrite=True, overrides=["train.distill=null"])
    results["distillation"] = {
        "teacher_image_accuracy": teacher["test"]["accuracy"],
        "student_distilled_accuracy": student["test"]["accuracy"],
        "student_labels_only_accuracy": alone["test"]["accuracy"],
    }

    results["multitask"] = {}
    for weighting in ("uncertainty", "fixed"):
        run = f"runs/multitask_{weighting}"
        summary = train("configs/experiments/multitask.yaml", run_dir=run, overwrite=True, overrides=[f"train.aux_heads.weighting={weighting}"])
        subsets = {"+".join(r["modalities"]): r["accuracy"] for r in evaluate_run(run, levels=(0.0,))["subsets"]}
        results["multitask"][weighting] = {
            "fused_accuracy": summary["test"]["accuracy"],
            "task_weights": summary["last_epoch"]["train"]["task_weights"],
            "subsets": subsets,
        }
    write_text_atomic(out / "workflow_crossmodal.json", json.dumps(results, indent=2))
    a, d = results["alignment"], results["distillation"]
    lines = [
        "**Alignment** (audio <-> image, 500 test pairs of the unseen speaker):",
        "",
        "| direction | R@1 | R@5 | R@10 | median rank | class R@1 | class R@5 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for direction in ("audio->visual", "visual->audio"):
        lines.append(
            f"| {direction} | {100 * a[f'{direction} R@1']:.1f}% | {100 * a[f'{direction} R@5']:.1f}% | {100 * a[f'{direction} R@10']:.1f}% | "
            f"{a[f'{direction} median rank']:.0f} | {100 * a[f'{direction} class R@1']:.1f}% | {100 * a[f'{direction} class R@5']:.1f}% |"
        )
    lines += [
        "",
        f"Zero-shot digit recognition from speech (nearest class-mean image embedding): {100 * a['zero_shot_audio_accuracy']:.1f}%.",
        "",
        "**Distillation** (speech student, 5 labels per digit; image teacher on the paired MNIST images):",
        "",
        "| model | test accuracy (unseen speaker) |",
        "|---|---:|",
        f"| image teacher (all labels) | {100 * d['teacher_image_accuracy']:.1f}% |",
        f"| speech student, 50 labels alone | {100 * d['student_labels_only_accuracy']:.1f}% |",
        f"| speech student, 50 labels + distillation on 2000 pairs | {100 * d['student_distilled_accuracy']:.1f}% |",
        "",
        "**Multi-task** (quickstart + one auxiliary head per modality):",
        "",
        "| weighting | fused | audio + text | visual alone | final task weights (fused / audio / text / visual) |",
        "|---|---:|---:|---:|---|",
    ]
    for weighting, r in results["multitask"].items():
        w = r["task_weights"]
        lines.append(
            f"| {weighting} | {100 * r['fused_accuracy']:.1f}% | {100 * r['subsets']['audio+text']:.1f}% | {100 * r['subsets']['visual']:.1f}% | "
            f"{w['fused']:.2f} / {w['audio']:.2f} / {w['text']:.2f} / {w['visual']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "workflow_crossmodal.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
