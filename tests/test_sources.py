"""One column specification over every table: CSV, Parquet (paths or embedded bytes), a pandas
DataFrame, a Hugging Face dataset (save_to_disk). The same samples, the same first epoch, errors
naming the source, the row and the column."""

import copy
import csv
import json
import sys

import pytest
import torch

import fusionzoo as fz
from fusionzoo.cli import main
from fusionzoo.config import build_dataset, load_config
from fusionzoo.training import evaluate_run, train

from common import AVDIGITS, ROOT, build_folder, data_section, model_section, needs_avdigits

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")
datasets = pytest.importorskip("datasets")
import pyarrow.parquet as pq  # noqa: E402

MODEL = model_section()
FILES = ("image", "audio")


def _rows(root):
    return list(csv.DictReader((root / "items.csv").open()))


def _embedded(root, rows):
    """The rows with the image and audio cells as the files' bytes (an empty cell: None)."""
    out = []
    for r in rows:
        r = {k: (v if v != "" else None) for k, v in r.items()}
        for c in FILES:
            r[c] = None if r[c] is None else (root / r[c]).read_bytes()
        out.append(r)
    return out


def _hf_dict(root, rows):
    """A DatasetDict of train / validation / test with Image and Audio features (bytes inside)."""
    parts = {}
    for name, split in (("train", "train"), ("validation", "val"), ("test", "test")):
        mine = [{k: v for k, v in r.items() if k != "split"} for r in _embedded(root, rows) if r["split"] == split]
        columns = {k: [r[k] for r in mine] for k in mine[0]}
        columns["image"] = [None if b is None else {"bytes": b, "path": None} for b in columns["image"]]
        columns["audio"] = [None if b is None else {"bytes": b, "path": None} for b in columns["audio"]]
        part = datasets.Dataset.from_dict(columns)
        parts[name] = part.cast_column("image", datasets.Image()).cast_column("audio", datasets.Audio(decode=False))
    return datasets.DatasetDict(parts)


def _sources(tmp_path, root):
    """The folder's manifest as every other source; each a data section for the same model."""
    rows = _rows(root)
    paths = tmp_path / "paths.parquet"
    pq.write_table(pa.Table.from_pylist([{k: (v if v != "" else None) for k, v in r.items()} for r in rows]), str(paths))
    embedded = tmp_path / "bytes.parquet"
    pq.write_table(pa.Table.from_pylist(_embedded(root, rows)), str(embedded))
    frame = pd.DataFrame(_embedded(root, rows), index=[f"s{i}" for i in range(len(rows))])
    _hf_dict(root, rows).save_to_disk(str(tmp_path / "hf"))
    base = {k: v for k, v in data_section(root).items() if k not in ("name", "path")}
    return {
        "csv": data_section(root),
        "parquet paths": {"name": "manifest", **base, "path": str(paths), "root": str(root)},
        "parquet bytes": {"name": "manifest", **base, "path": str(embedded), "root": str(root)},  # (the .npy features)
        "dataframe": {"name": "manifest", **base, "path": frame, "root": str(root)},
        "hf_dataset": {"name": "hf_dataset", **base, "path": str(tmp_path / "hf"), "root": str(root)},
    }


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def test_every_source_gives_the_manifest_s_samples(tmp_path):
    root, _ = build_folder(tmp_path, blank_every=5)
    sources = _sources(tmp_path, root)
    for split in ("train", "val", "test"):
        expected = build_dataset(load_config({"data": sources["csv"]}), split)
        for name, section in sources.items():
            ds = build_dataset(load_config({"data": section}), split)
            assert len(ds) == len(expected) and ds.classes == expected.classes, name
            assert ds.fitted["vocabs"] == expected.fitted["vocabs"], name
            for i in range(len(ds)):
                _same(ds[i], expected[i])
    blank = build_dataset(load_config({"data": sources["dataframe"]}), "train")
    assert any("visual" not in blank[i] for i in range(len(blank)))  # a None cell: a missing modality


def test_every_source_trains_the_same_first_epoch(tmp_path):
    root, _ = build_folder(tmp_path, blank_every=5)
    runs = {}
    for name, section in _sources(tmp_path, root).items():
        runs[name] = train({"seed": 0, "data": section, "model": MODEL, "train": {"epochs": 1, "batch_size": 8, "lr": 0.01}},
                           run_dir=tmp_path / "runs" / name.replace(" ", "_"), log=False)
    losses = {n: r["last_epoch"]["train"]["loss"] for n, r in runs.items()}
    assert len(set(losses.values())) == 1, losses
    assert len({r["weights_sha256"] for r in runs.values()}) == 1


def test_a_dataframe_run_keeps_its_table_and_evaluates_and_resumes(tmp_path):
    root, _ = build_folder(tmp_path)
    frame = pd.DataFrame(_embedded(root, _rows(root)))
    section = {**{k: v for k, v in data_section(root).items() if k != "path"}, "path": frame, "root": str(root)}
    config = {"seed": 0, "data": section, "model": MODEL, "train": {"epochs": 1, "batch_size": 8, "lr": 0.01}}
    run_dir = tmp_path / "run"
    first = train(config, run_dir=run_dir, log=False)
    saved = load_config(run_dir / "config.yaml")
    assert saved.data["path"] == str((run_dir / "data.parquet").resolve())
    result = evaluate_run(run_dir)  # rebuilt from the run's own Parquet copy
    full = next(r for r in result["subsets"] if len(r["modalities"]) == 4)
    assert full["accuracy"] == pytest.approx(first["test"]["accuracy"])
    longer = copy.deepcopy(config)
    longer["train"]["epochs"] = 2
    assert train(longer, run_dir=run_dir, resume=True, log=False)["epochs_run"] == 2
    changed = copy.deepcopy(longer)
    changed["train"]["epochs"] = 3
    changed["data"]["path"] = frame.assign(caption=frame["caption"].str.upper())
    with pytest.raises(ValueError, match="the data of the train, val, test splits changed since the run started"):
        train(changed, run_dir=run_dir, resume=True, log=False)


def test_from_dataframe_names_rows_by_their_index(tmp_path):
    root, _ = build_folder(tmp_path)
    rows = _embedded(root, _rows(root))
    rows[2]["image"] = b"not an image at all"
    frame = pd.DataFrame(rows, index=[f"s{i}" for i in range(len(rows))])
    options = {k: v for k, v in data_section(root).items() if k not in ("name", "path")} | {"root": str(root)}
    with pytest.raises(ValueError, match=r"DataFrame: row 's2': column 'image': \(the cell's 19 bytes\) is not a PNG"):
        fz.data.from_dataframe(frame, **options)
    ds = fz.data.from_dataframe(frame, **options, on_error="skip")
    assert ds.skipped == [{"line": "s2", "column": "image", "error": "(the cell's 19 bytes) is not a PNG, JPEG, WebP or GIF image (it starts with b'not an i')"}]
    with pytest.raises(TypeError, match="expected a pandas DataFrame"):
        fz.data.from_dataframe(rows, **options)


def test_parquet_errors_name_the_file_the_row_and_the_column(tmp_path):
    root, _ = build_folder(tmp_path)
    rows = [{k: (v if v != "" else None) for k, v in r.items()} for r in _rows(root)]
    rows[4]["audio"] = "wav/missing.wav"
    path = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    section = {**data_section(root), "path": str(path), "root": str(root)}
    with pytest.raises(ValueError, match=rf"{path}: row 4: column 'audio': file not found"):
        build_dataset(load_config({"data": section}), "val" if rows[4]["split"] == "val" else rows[4]["split"])
    folder = tmp_path / "parts"
    folder.mkdir()
    for k in range(2):  # a folder of Parquet files: one table, in name order
        pq.write_table(pa.Table.from_pylist(rows[k * 9:(k + 1) * 9]), str(folder / f"part-{k}.parquet"))
    rows[4]["audio"] = _rows(root)[4]["audio"]
    pq.write_table(pa.Table.from_pylist(rows[:9]), str(folder / "part-0.parquet"))
    ds = build_dataset(load_config({"data": {**section, "path": str(folder)}}), "train")
    assert len(ds) == sum(r["split"] == "train" for r in rows[:18])


def test_without_the_data_extra_a_parquet_manifest_is_one_line(tmp_path, monkeypatch, capsys):
    root, _ = build_folder(tmp_path)
    pq.write_table(pa.Table.from_pylist([{k: (v or None) for k, v in r.items()} for r in _rows(root)]), str(tmp_path / "i.parquet"))
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"seed": 0, "data": {**data_section(root), "path": str(tmp_path / "i.parquet"), "root": str(root)},
                                  "model": MODEL, "train": {"epochs": 1}}))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'fusionzoo[data]'" in err


@needs_avdigits
@pytest.mark.slow
def test_the_avdigits_export_from_every_source_trains_as_the_manifest(tmp_path):
    """Map-style sources bitwise; streamed ones (another order) within the seeds' spread of the
    first-epoch loss (0.06 over seeds 0-2: benchmarks/results/.../sources_first_epoch.md)."""
    from fusionzoo.data.export import export_avdigits
    from fusionzoo.data.shards import write_shards

    items = export_avdigits(tmp_path / "avd", root=AVDIGITS, blank=0.2)
    rows = list(csv.DictReader(items.open()))
    embedded = _embedded(items.parent, rows)
    pq.write_table(pa.Table.from_pylist(embedded), str(tmp_path / "avd.parquet"))
    base = load_config(ROOT / "configs/experiments/avdigits_manifest.yaml", [f"data.path={items}", "data.cache=none", "train.epochs=1"])
    hf = _hf_dict(items.parent, rows)
    hf.save_to_disk(str(tmp_path / "hf"))
    sections = {"manifest": base.data, "parquet": {**base.data, "path": str(tmp_path / "avd.parquet")},
                "hf_dataset": {**base.data, "name": "hf_dataset", "path": str(tmp_path / "hf")},
                "dataframe": {**base.data, "path": pd.DataFrame(embedded)}}
    # (the streamed Hugging Face dataset: tests/test_shards.py and benchmarks/sources_first_epoch.py)
    streams = {"webdataset": {"name": "webdataset", "path": str(write_shards(base.data, tmp_path / "shards", shard_size=100))}}
    losses = {}
    for name, section in {**sections, **streams}.items():
        cfg = {**base.to_dict(), "data": section}
        losses[name] = train(cfg, run_dir=tmp_path / name.replace(" ", "_"), log=False)["last_epoch"]["train"]["loss"]
    assert len({losses[n] for n in sections}) == 1, losses
    assert all(abs(losses[n] - losses["manifest"]) < 0.1 for n in streams), {n: losses[n] for n in ("manifest", *streams)}
    subsets = evaluate_run(tmp_path / "webdataset")["subsets"]
    assert sorted(len(r["modalities"]) for r in subsets) == [1, 1, 2] and all(r["n"] == 500 for r in subsets)
