"""Samples/s of the data pipeline (dataset + collate + DataLoader) for the registered datasets, and
the time to build each dataset. With the avdigits data present, it is also written as a manifest
folder (PNG + WAV + captions, ``fusionzoo data export-avdigits``) and read back through the
``manifest`` dataset: decoding image, audio and text per sample, from the decoded memory cache, and
from one Parquet file holding every image's and recording's bytes, and streamed from WebDataset
shards (``fusionzoo data shard``: 100 samples a shard, a shuffle buffer of 1,000; its workers
restart every epoch).

    python benchmarks/loader_speed.py [--avdigits ../shared/datasets/avdigits] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import fusionzoo as fz
from fusionzoo.atomic import write_text_atomic
from fusionzoo.bench import machine_tag
from fusionzoo.data import make_loader
from fusionzoo.data.export import export_avdigits
from fusionzoo.data.shards import write_shards

MANIFEST_MODALITIES = {
    "visual": {"column": "image", "kind": "image", "channels": 1, "normalize": {"mean": [0.1307], "std": [0.3081]}},
    "audio": {"column": "audio", "kind": "audio", "sample_rate": 8000},
    "text": {"column": "caption", "kind": "text"},
}


def time_loader(dataset, batch_size: int, num_workers: int, epochs: int = 2) -> float:
    loader = make_loader(dataset, batch_size, shuffle=True, num_workers=num_workers)
    for _ in loader:  # warm-up epoch (starts the workers)
        pass
    start = time.perf_counter()
    for _ in range(epochs):
        for _ in loader:
            pass
    return epochs * len(dataset) / (time.perf_counter() - start)


def embedded_parquet(items: Path) -> Path:
    """The manifest as one Parquet file with each image's and recording's bytes in its cell."""
    import csv

    import pyarrow
    import pyarrow.parquet as pq

    rows = []
    for r in csv.DictReader(items.open()):
        r = {k: (v if v != "" else None) for k, v in r.items()}
        for c in ("image", "audio"):
            r[c] = None if r[c] is None else (items.parent / r[c]).read_bytes()
        rows.append(r)
    path = items.with_suffix(".parquet")
    pq.write_table(pyarrow.Table.from_pylist(rows), str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--avdigits", default=os.environ.get("FUSIONZOO_AVDIGITS", "../shared/datasets/avdigits"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).parent / "results" / machine_tag()
    records = []
    builds = {"synthetic (n=10000)": lambda: fz.create_dataset("synthetic", n=10000, seed=0)}
    if (Path(args.avdigits) / "manifest.csv").is_file():
        builds["avdigits train (2000)"] = lambda: fz.create_dataset("avdigits", root=args.avdigits, split="train")
        builds["avdigits train hard (2000)"] = lambda: fz.create_dataset("avdigits", root=args.avdigits, split="train", difficulty="hard")
        folder = Path(tempfile.mkdtemp(prefix="fusionzoo-manifest-"))
        items = export_avdigits(folder / "avdigits", root=args.avdigits)
        manifest = {"path": items, "modalities": MANIFEST_MODALITIES, "label": {"column": "label"}}
        builds["manifest png+wav+text train (2000)"] = lambda: fz.create_dataset("manifest", **manifest)
        builds["manifest png+wav+text, cache: memory"] = lambda: fz.create_dataset("manifest", **manifest, cache="memory")
        parquet = embedded_parquet(items)
        builds["parquet, png+wav bytes inside (2000)"] = lambda: fz.create_dataset("manifest", **{**manifest, "path": parquet})
        index = write_shards({"name": "manifest", **manifest}, folder / "shards", shard_size=100)
        builds["webdataset, 20 shards of 100 (2000)"] = lambda: fz.create_dataset("webdataset", path=index)
    for name, build in builds.items():
        start = time.perf_counter()
        ds = build()
        build_s = time.perf_counter() - start
        for workers in (0, 2):
            rate = time_loader(ds, args.batch_size, workers)
            records.append({"dataset": name, "build_s": build_s, "num_workers": workers, "batch_size": args.batch_size, "samples_per_s": rate})
            print(f"{name:28s} built in {build_s:5.2f} s  workers={workers}  {rate:9.0f} samples/s", flush=True)
    info = {"machine": machine_tag(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "command": "python benchmarks/loader_speed.py"}
    write_text_atomic(out / "loader_speed.json", json.dumps({"info": info, "records": records}, indent=2))
    lines = [f"# Data loading ({info['machine']})", "", f"Command: `{info['command']}`, torch {info['torch']}.", "",
             "| dataset | build s | workers | batch | samples/s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['dataset']} | {r['build_s']:.2f} | {r['num_workers']} | {r['batch_size']} | {r['samples_per_s']:.0f} |" for r in records]
    write_text_atomic(out / "loader_speed.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
