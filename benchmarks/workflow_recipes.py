"""Transfer and cross-modal recipes on AV digits, measured: ensembles of separately trained runs,
alignment as pre-training for a classifier, and CCA against the learned InfoNCE space.

    python benchmarks/workflow_recipes.py [--seeds 0,1,2] [--runs DIR] [--out DIR]

1. **Ensemble** (hard version): an image-only and a speech-only run, each trained on its own
   (``avdigits_late_hard.yaml`` with one encoder), averaged afterwards (``fusionzoo ensemble``;
   equal weights, and weights fitted on validation), against the jointly trained late fusion
   (``avdigits_late_hard.yaml``).
2. **From alignment to classification** (clean version, 10 labels per digit): the encoders of the
   InfoNCE alignment run (``align_avdigits.yaml``) initialise ``avdigits_concat_clean.yaml``'s
   classifier (``init_from`` with ``include: [encoders.*]``; fine-tuned, or a linear probe), against
   training from scratch on the same 100 labels.
3. **CCA vs InfoNCE** (clean version): CCA fitted on the training-split features of two unimodal
   classifiers (image-only and speech-only, all labels; ``fusionzoo embed``) against the learned
   InfoNCE space, by class-level retrieval between the 500 test clips and their images.

Writes ``workflow_recipes.{json,md}`` (mean ± 95% t-interval over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

from fusionzoo.atomic import write_text_atomic
from fusionzoo.bench import machine_tag
from fusionzoo.compare.stats import mean_ci
from fusionzoo.config import load_config
from fusionzoo.mapping import CCA
from fusionzoo.training import embed_run, ensemble_runs, train
from fusionzoo.training.retrieval import retrieval_metrics

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "experiments"


def config(name: str, avdigits: str, seed: int, keep: str | None = None, **train_opts) -> dict:
    cfg = load_config(CONFIGS / f"{name}.yaml").to_dict()
    cfg["seed"] = seed
    cfg["data"]["root"] = avdigits
    if keep is not None:  # one modality: the other encoder is dropped (and modality dropout with it)
        cfg["model"]["encoders"] = {keep: cfg["model"]["encoders"][keep]}
        cfg["train"]["modality_dropout"] = 0.0
    cfg["train"].update(train_opts)
    return cfg


def run(cfg: dict, path: Path) -> dict:
    if not (path / "metrics.json").is_file():
        train(cfg, run_dir=path, overwrite=True, log=False)
    return json.loads((path / "metrics.json").read_text())


def features(folder: Path, split: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    with safe_open(str(folder / f"{split}.safetensors"), framework="pt") as f:
        return {k.split(".", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith("features.")}, f.get_tensor("label")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--avdigits", default=os.environ.get("FUSIONZOO_AVDIGITS", str(ROOT.parent / "shared/datasets/avdigits")))
    parser.add_argument("--runs", type=Path, default=Path("runs/recipes"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "results" / machine_tag()
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    results: dict = {"ensemble": {}, "align_init": {}, "cca": {}}

    # 1. ensembles of separately trained runs (hard)
    rows: dict[str, list[float]] = {}
    weights = []
    for seed in seeds:
        base = args.runs / "ensemble" / f"seed-{seed}"
        image = run(config("avdigits_late_hard", args.avdigits, seed, keep="visual"), base / "image")
        speech = run(config("avdigits_late_hard", args.avdigits, seed, keep="audio"), base / "speech")
        joint = run(config("avdigits_late_hard", args.avdigits, seed), base / "joint_late")
        equal = ensemble_runs([base / "image", base / "speech"], out=base / "ensemble_equal")
        fitted = ensemble_runs([base / "image", base / "speech"], fit="val", out=base / "ensemble_fitted")
        both = lambda r: next(x for x in r["test"] if len(x["modalities"]) == 2)["accuracy"]  # noqa: E731
        for name, value in (("image-only run", image["test"]["accuracy"]), ("speech-only run", speech["test"]["accuracy"]),
                            ("ensemble, equal weights", both(equal)), ("ensemble, weights fitted on val", both(fitted)),
                            ("joint late fusion (weighted_late)", joint["test"]["accuracy"])):
            rows.setdefault(name, []).append(value)
        weights.append(fitted["weights"])
        print(f"ensemble seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in rows.items()), flush=True)
    results["ensemble"] = {"test_accuracy": {k: mean_ci(v) for k, v in rows.items()}, "per_seed": rows, "fitted_weights": weights}

    # 2. alignment -> classifier with 10 labels per digit (clean)
    align_dir = args.runs / "align"
    align = run(load_config(CONFIGS / "align_avdigits.yaml", [f"data.root={args.avdigits}"]).to_dict(), align_dir)
    rows = {}
    few = {"epochs": 30, "warmup_epochs": 1}
    for seed in seeds:
        base = args.runs / "align_init" / f"seed-{seed}"
        init = {"init_from": {"path": str(align_dir), "include": ["encoders.*"]}}
        variants = {
            "scratch": ("scratch", {}),
            "init from alignment, fine-tuned": ("align_finetune", init),
            "init from alignment, linear probe": ("align_probe", {**init, "strategy": "linear_probe"}),
        }
        for name, (folder, opts) in variants.items():
            cfg = config("avdigits_concat_clean", args.avdigits, seed, **few, **opts)
            cfg["data"]["labels_per_class"] = 10
            m = run(cfg, base / folder)
            rows.setdefault(name, []).append(m["test"]["accuracy"])
        print(f"align-init seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in rows.items()), flush=True)
    results["align_init"] = {"test_accuracy": {k: mean_ci(v) for k, v in rows.items()}, "per_seed": rows}

    # 3. CCA on unimodal classifiers' features vs the InfoNCE space (clean, seed 0)
    feats = {}
    for m, keep in (("visual", "visual"), ("audio", "audio")):
        path = args.runs / "cca" / f"{m}_only"
        run(config("avdigits_concat_clean", args.avdigits, seeds[0], keep=keep), path)
        embed_run(path, ("train", "test"), path / "features")
        feats[m] = {s: features(path / "features", s) for s in ("train", "test")}
    train_labels, test_labels = feats["audio"]["train"][1], feats["audio"]["test"][1]
    assert torch.equal(train_labels, feats["visual"]["train"][1]) and torch.equal(test_labels, feats["visual"]["test"][1])
    rows = {}
    for k in (9, 32):
        cca = CCA(n_components=k, reg_x=1e-3, reg_y=1e-3).fit(feats["audio"]["train"][0]["audio"], feats["visual"]["train"][0]["visual"])
        za, zv = cca(feats["audio"]["test"][0]["audio"], feats["visual"]["test"][0]["visual"])
        rows[f"CCA (k={k}) on unimodal classifiers' features"] = retrieval_metrics(za, zv, names=("audio", "visual"), labels=test_labels)
    rows["InfoNCE alignment (align_avdigits.yaml)"] = align["test"]
    keys = ["audio->visual class R@1", "audio->visual class R@5", "visual->audio class R@1", "visual->audio class R@5", "audio->visual R@1"]
    results["cca"] = {name: {k: r[k] for k in keys} for name, r in rows.items()}
    results["info"] = {
        "machine": machine_tag(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "command": "python benchmarks/workflow_recipes.py " + " ".join(sys.argv[1:] if argv is None else argv), "seeds": seeds,
        "wall_seconds": time.perf_counter() - started,
    }
    write_text_atomic(out / "workflow_recipes.json", json.dumps(results, indent=2))
    write_text_atomic(out / "workflow_recipes.md", _markdown(results))
    print(_markdown(results))
    return 0


def _pm(stat: dict) -> str:
    return f"{100 * stat['mean']:.1f}" + (f" ± {100 * stat['half_width']:.1f}" if stat["half_width"] is not None else "")


def _markdown(results: dict) -> str:
    info = results["info"]
    lines = [f"# Transfer and cross-modal recipes on AV digits ({info['machine']})", "",
             f"Command: `{info['command'].strip()}`; torch {info['torch']}; seeds {info['seeds']}. Test accuracy (%) on the unseen "
             "speaker at the epoch selected on validation; mean ± half-width of the 95% t-interval over seeds.", "",
             "**Ensembles of separately trained runs** (hard version):", "", "| model | test accuracy (%) |", "|---|---:|"]
    lines += [f"| {k} | {_pm(v)} |" for k, v in results["ensemble"]["test_accuracy"].items()]
    lines += ["", f"Weights fitted on validation (image, speech) per seed: {results['ensemble']['fitted_weights']}.", "",
              "**From alignment to classification** (clean version, 10 labels per digit):", "", "| classifier | test accuracy (%) |", "|---|---:|"]
    lines += [f"| {k} | {_pm(v)} |" for k, v in results["align_init"]["test_accuracy"].items()]
    lines += ["", "**CCA vs the learned InfoNCE space** (clean version, seed 0, 500 test clips and their images; class-level retrieval):", "",
              "| space | audio->image class R@1 | R@5 | image->audio class R@1 | R@5 | instance R@1 |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in results["cca"].items():
        lines.append(f"| {name} | {100 * r['audio->visual class R@1']:.1f} | {100 * r['audio->visual class R@5']:.1f} | "
                     f"{100 * r['visual->audio class R@1']:.1f} | {100 * r['visual->audio class R@5']:.1f} | {100 * r['audio->visual R@1']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
