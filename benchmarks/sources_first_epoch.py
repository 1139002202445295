"""The AV digits export read from every source trains the same first epoch: the manifest (PNG + WAV
files), Parquet with the files' bytes inside, and WebDataset shards streamed.

    python benchmarks/sources_first_epoch.py [--avdigits ../shared/datasets/avdigits] [--seeds 0,1,2]

The export (``fusionzoo data export-avdigits --blank 0.2``: a fifth of the rows lack one modality)
trains one epoch of ``configs/experiments/avdigits_manifest.yaml`` per seed from each source. The
map-style sources give bitwise the same epoch (the same rows in the same order); the streams
(WebDataset shards; the Hugging Face folder with ``streaming: true``) read another order (their
shard permutation and shuffle buffer), so their loss differs by what a different order changes,
which the seeds measure. The streamed run is then evaluated under every modality
subset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from fusionzoo.atomic import write_text_atomic
from fusionzoo.bench import machine_tag
from fusionzoo.config import load_config
from fusionzoo.data.export import export_avdigits
from fusionzoo.data.shards import write_shards
from fusionzoo.training import evaluate_run, train
from loader_speed import embedded_parquet  # (benchmarks/, the script's folder)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "avdigits_manifest.yaml"


def _hf_folder(items: Path, out: Path) -> Path:
    """The export as a Hugging Face DatasetDict (Image and Audio features, bytes inside), saved."""
    import csv

    import datasets

    rows = [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(items.open())]
    parts = {}
    for hf_split, split in (("train", "train"), ("validation", "val"), ("test", "test")):
        mine = [r for r in rows if r["split"] == split]
        columns = {c: [r[c] for r in mine] for c in ("caption", "label", "speaker")}
        for c in ("image", "audio"):
            columns[c] = [None if r[c] is None else {"bytes": (items.parent / r[c]).read_bytes(), "path": None} for r in mine]
        part = datasets.Dataset.from_dict(columns)
        parts[hf_split] = part.cast_column("image", datasets.Image()).cast_column("audio", datasets.Audio(decode=False))
    datasets.DatasetDict(parts).save_to_disk(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--avdigits", default=os.environ.get("FUSIONZOO_AVDIGITS", "../shared/datasets/avdigits"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).parent / "results" / machine_tag()
    work = Path(tempfile.mkdtemp(prefix="fusionzoo-sources-"))
    items = export_avdigits(work / "avd", root=args.avdigits, blank=0.2)
    base = load_config(CONFIG, [f"data.path={items}", "data.cache=none", "train.epochs=1"])
    sources = {
        "manifest (PNG + WAV files)": base.data,
        "Parquet (bytes inside)": {**base.data, "path": str(embedded_parquet(items))},
        "WebDataset shards (20 x 100, streamed)": {"name": "webdataset", "path": str(write_shards(base.data, work / "shards", shard_size=100))},
        "Hugging Face save_to_disk, streamed": {**{k: v for k, v in base.data.items() if k != "splits"}, "name": "hf_dataset",
                                                "path": str(_hf_folder(items, work / "hf")), "streaming": True},
    }
    records = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, data in sources.items():
            run = work / f"{len(records)}"
            result = train({**base.to_dict(), "seed": seed, "data": data}, run_dir=run, log=False)
            records.append({"source": name, "seed": seed, "loss": result["last_epoch"]["train"]["loss"], "test_accuracy": result["test"]["accuracy"],
                            "weights_sha256": result["weights_sha256"], "run": str(run)})
            print(f"{name:40s} seed {seed}: first-epoch loss {records[-1]['loss']:.5f}", flush=True)
    streamed = next(r for r in records if r["source"].startswith("WebDataset"))
    subsets = [{"modalities": s["modalities"], "accuracy": s["accuracy"], "n": s["n"]} for s in evaluate_run(streamed["run"])["subsets"]]
    info = {"machine": machine_tag(), "torch": torch.__version__, "command": "python benchmarks/sources_first_epoch.py"}
    write_text_atomic(out / "sources_first_epoch.json", json.dumps({"info": info, "records": records, "stream_subsets": subsets}, indent=2))
    lines = [f"# The AV digits export from every source: the first epoch ({info['machine']})", "",
             f"Command: `{info['command']}`, torch {info['torch']}; `avdigits_manifest.yaml`, one epoch, 20% of rows blank one modality.", "",
             "| source | " + " | ".join(f"seed {r['seed']} loss" for r in records[:: len(sources)]) + " | mean |", "|---|" + "---:|" * (len(records) // len(sources) + 1)]
    for name in sources:
        losses = [r["loss"] for r in records if r["source"] == name]
        lines.append(f"| {name} | " + " | ".join(f"{v:.5f}" for v in losses) + f" | {statistics.mean(losses):.4f} |")
    lines += ["", "The streamed run (seed " + str(streamed["seed"]) + ") evaluated under every modality subset (test):", "",
              "| modalities | accuracy | n |", "|---|---:|---:|"]
    lines += [f"| {' + '.join(s['modalities'])} | {s['accuracy']:.3f} | {s['n']} |" for s in subsets]
    write_text_atomic(out / "sources_first_epoch.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
