"""The frozen-feature cache at real sizes: a linear probe on three foundation encoders with the
architectures of bert-base-uncased, vit-base-patch16-224 and wav2vec2-base (random weights: nothing
is downloaded), trained with ``train.feature_cache: none`` and ``memory`` on the same synthetic
manifest (captions, 64x64 PNGs, 1 s of 16 kHz audio). Reports the wall time of the set-up (where
the cache computes every output once), each epoch's time and the test metrics of both.

    python benchmarks/feature_cache.py [--train 48] [--epochs 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from torchvision.io import write_png

from fusionzoo.bench import machine_info, machine_tag, script_command, write_report
from fusionzoo.training import train

WORDS = "a the red blue green small big cat dog owl bird sings runs sleeps at night in day light dark".split()
ARCHITECTURES = {
    "text": ("hf_text", "bert-base-uncased", {"model_type": "bert"}),  # BertConfig() is bert-base
    "visual": ("hf_vision", "google/vit-base-patch16-224", {"model_type": "vit"}),  # ViTConfig() is ViT-B/16 at 224
    "audio": ("hf_audio", "facebook/wav2vec2-base", {"model_type": "wav2vec2"}),  # Wav2Vec2Config() is the base model
}


def write_data(root: Path, n_train: int, n_eval: int, classes: int = 4) -> Path:
    (root / "img").mkdir(parents=True)
    (root / "wav").mkdir()
    rng = np.random.default_rng(0)
    rows = ["image,audio,caption,label,split"]
    n = n_train + 2 * n_eval
    for i in range(n):
        c = i % classes
        img = torch.from_numpy(rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))
        write_png(img, str(root / "img" / f"{i}.png"))
        t = np.arange(16000) / 16000
        soundfile.write(root / "wav" / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 100 * c) * t) + 0.05 * rng.standard_normal(16000)).astype(np.float32), 16000)
        caption = " ".join(rng.choice(WORDS, 12))
        split = "train" if i < n_train else "val" if i < n_train + n_eval else "test"
        rows.append(f"img/{i}.png,wav/{i}.wav,{caption},{c},{split}")
    (root / "items.csv").write_text("\n".join(rows) + "\n")
    return root / "items.csv"


#: ``--size tiny``: the same model types at a few thousand parameters (the script's own test).
TINY = {
    "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "visual": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 8},
    "audio": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "conv_dim": [16, 16],
              "conv_stride": [5, 4], "conv_kernel": [10, 8], "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2},
}


def config(manifest: Path, tokenizer: Path, epochs: int, cache: str, size: str = "base") -> dict:
    encoders = {m: {"name": name, "model": {**spec, **(TINY[m] if size == "tiny" else {})}} for m, (name, _, spec) in ARCHITECTURES.items()}
    encoders["text"]["tokenizer"] = str(tokenizer)
    encoders["audio"]["sample_rate"] = 16000
    encoders["visual"]["pool"] = "cls"
    return {
        "seed": 0,
        "data": {
            "name": "manifest", "path": str(manifest), "label": {"column": "label", "classes": ["0", "1", "2", "3"]},
            "modalities": {"visual": {"column": "image", "kind": "image"}, "audio": {"column": "audio", "kind": "audio", "sample_rate": 16000},
                           "text": {"column": "caption", "kind": "text"}},
        },
        "model": {"encoders": encoders, "fusion": {"name": "concat_mlp", "out_dim": 64}, "head": {"name": "linear", "out_dim": 4}},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 0.001, "strategy": "linear_probe", "feature_cache": cache, "progress": False},
    }


def run(cfg: dict, folder: Path) -> dict:
    start = time.perf_counter()
    train(cfg, run_dir=folder, log=False)
    total = time.perf_counter() - start
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((folder / "metrics.json").read_text())
    epochs = [r["epoch_seconds"] for r in log]
    return {"total_s": total, "epoch_s": epochs, "setup_and_eval_s": total - sum(epochs), "test": metrics["test"],
            "val_loss": [r["val"]["loss"] for r in log]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=48, help="training rows (val and test get a third each)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", choices=("base", "tiny"), default="base", help="tiny: small architectures, for the script's test")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).parent / "results" / machine_tag()
    from fusionzoo.encoders.hf import word_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = write_data(tmp / "data", args.train, args.train // 3)
        word_tokenizer(WORDS, max_length=512).save_pretrained(tmp / "tok")
        results = {mode: run(config(manifest, tmp / "tok", args.epochs, mode, args.size), tmp / f"run-{mode}") for mode in ("none", "memory")}
    plain, cached = results["none"], results["memory"]
    later = slice(1, None)
    speedup = np.mean(plain["epoch_s"][later]) / np.mean(cached["epoch_s"][later])
    diff = max(abs(a - b) for a, b in zip(plain["val_loss"], cached["val_loss"]))
    payload = {"command": script_command("feature_cache.py", argv), "machine": machine_info(), "size": args.size, "architectures": {m: a[1] for m, a in ARCHITECTURES.items()},
               "rows": {"train": args.train, "val": args.train // 3, "test": args.train // 3}, "results": results,
               "epoch_speedup_after_the_first": speedup, "max_val_loss_difference": diff}
    lines = [
        "# Frozen-feature cache at real sizes", "",
        f"`{payload['command']}`; {machine_info().get('cpu', '')}, {torch.get_num_threads()} threads, torch {torch.__version__}.", "",
        "Linear probe (encoders frozen; concat_mlp fusion and head train) on bert-base, ViT-B/16-224 and wav2vec2-base "
        f"architectures with random weights; {args.train} training rows, {args.train // 3} validation, {args.train // 3} test; "
        f"batch 16, {args.epochs} epochs.", "",
        "| feature_cache | set-up + evaluation (s) | epoch times (s) | total (s) | test accuracy | test loss |",
        "|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        lines.append(f"| {mode} | {r['setup_and_eval_s']:.1f} | {', '.join(f'{s:.2f}' for s in r['epoch_s'])} | {r['total_s']:.1f} | "
                     f"{r['test']['accuracy']:.4f} | {r['test']['loss']:.6f} |")
    lines += ["", f"Epochs after the first: **{speedup:.0f}x** faster with the cache (the cache computes every sample's output once, "
              "in the set-up). Largest difference of a validation loss between the two runs: "
              f"{diff:.1e} (float rounding: the cache batches samples differently).", ""]
    write_report(out, "feature_cache", payload, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
