"""The ``manifest`` dataset: every kind of column, missing cells end to end, tasks, splits, bad rows,
the fitted state reused by eval and resume."""

import csv
import json
import os
import re

import numpy as np
import pytest
import torch
from torchvision.io import decode_image, write_png
from torchvision.transforms.v2.functional import resize

import fusionzoo as fz
from fusionzoo.data.collate import collate
from fusionzoo.config import build_dataset, load_config
from fusionzoo.data.decode import IMAGENET_MEAN, IMAGENET_STD
from fusionzoo.data.export import export_avdigits
from fusionzoo.data.manifest import ManifestDataset, draw_splits, read_manifest
from fusionzoo.training import evaluate_run, explain_run, load_run, train
from fusionzoo.training.checkpoint import load_data_state

from common import AVDIGITS, CLASSES, ROOT, MODALITIES, build_folder, data_section, model_section, needs_avdigits, write_rows, write_wav

def config(root, fmt="csv", epochs=2, out_dim=3, data=None, **train_kw):
    return {
        "seed": 0,
        "data": data or data_section(root, fmt),
        "model": model_section(out_dim),
        "train": {"epochs": epochs, "batch_size": 8, "lr": 0.01, **train_kw},
    }


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_every_kind_of_column_reads_to_the_modality_contract(tmp_path, fmt):
    root, rows = build_folder(tmp_path, fmt=fmt, rates=(8000, 16000))
    ds = fz.create_dataset("manifest", **{k: v for k, v in data_section(root, fmt).items() if k != "name"})
    assert ds.modalities == ("audio", "extra", "text", "visual") and ds.classes == CLASSES
    assert len(ds) == 12  # 4 of every 6 rows per class are train
    s = ds[0]
    assert s["visual"].shape == (1, 16, 16) and s["visual"].dtype == torch.float32 and 0 <= s["visual"].min() and s["visual"].max() <= 1
    assert s["audio"].dim() == 1 and s["audio"].shape[0] == 2000  # 0.25 s at 8 kHz
    assert ds[1]["audio"].shape[0] == 2000  # recorded at 16 kHz, resampled
    assert s["text"].dtype == torch.long and ds.vocab.decode(s["text"]) == "a small cat"
    assert s["extra"].shape == (3,) and s["label"] == 0
    assert ds.fitted["feature_dims"] == {"extra": 3}
    batch = collate([ds[i] for i in range(4)])
    assert batch["label"].dtype == torch.long and batch["audio_lengths"].tolist() == [2000] * 4


def test_images_decode_as_rgb_resized_and_normalized(tmp_path):
    root, _ = build_folder(tmp_path, n_per_class=6)
    mods = {"visual": {"column": "image", "kind": "image", "channels": 3, "size": [8, 10], "normalize": "imagenet", "augment": {"flip": 0.5, "crop": {"scale": [0.5, 1.0]}, "color_jitter": 0.2}}}
    train_set = ManifestDataset(path=root / "items.csv", modalities=mods, label={"column": "label"})
    test_set = ManifestDataset(path=root / "items.csv", modalities=mods, label={"column": "label"}, split="test")
    assert train_set[0]["visual"].shape == (3, 8, 10)
    grey = decode_image(str(root / "img" / f"{test_set.line_of(0) - 2}.png"))  # 1 channel on disk
    expected = resize(grey.expand(3, -1, -1), [8, 10], antialias=True).float() / 255
    expected = (expected - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(test_set[0]["visual"], expected, atol=1e-5, rtol=0)  # evaluation: resize + normalise only
    torch.manual_seed(0)
    a = train_set[0]["visual"]
    torch.manual_seed(1)
    assert not torch.equal(a, train_set[0]["visual"])  # training samples are augmented


def test_audio_options_mono_peak_and_rate_errors(tmp_path):
    root = tmp_path / "a"
    root.mkdir()
    t = np.arange(4000) / 8000
    write_wav(root / "st.wav", 0.25 * np.sin(2 * np.pi * 440 * t), 8000, channels=2)
    write_wav(root / "hi.wav", 0.25 * np.sin(2 * np.pi * 440 * t), 16000)
    write_rows(root / "m.csv", [{"a": "st.wav", "y": "1", "split": "train"}, {"a": "hi.wav", "y": "2", "split": "train"}])
    mods = {"audio": {"column": "a", "kind": "audio", "sample_rate": 8000, "normalize": "peak"}}
    ds = ManifestDataset(path=root / "m.csv", modalities=mods, label={"column": "y"})
    assert ds[0]["audio"].shape == (4000,) and ds[0]["audio"].abs().max() == pytest.approx(1.0)
    assert ds[1]["audio"].shape == (2000,)  # 16 kHz -> 8 kHz
    strict = {"audio": {**mods["audio"], "resample": False}}
    with pytest.raises(ValueError, match=r"m\.csv: line 3: column 'a': audio .*hi\.wav is sampled at 16000 Hz, expected 8000 Hz \(resample: false\)"):
        ManifestDataset(path=root / "m.csv", modalities=strict, label={"column": "y"})


def test_empty_cells_are_missing_modalities_end_to_end(tmp_path):
    root, rows = build_folder(tmp_path, blank_every=2)
    ds = ManifestDataset(path=root / "items.csv", modalities=MODALITIES, label={"column": "label"})
    batch = collate([ds[i] for i in range(len(ds))])
    for m, column in [("visual", "image"), ("audio", "audio"), ("text", "caption"), ("extra", "feats")]:
        expected = [rows[ds.line_of(i) - 2][column] != "" for i in range(len(ds))]
        assert batch["present"][m].tolist() == expected
        assert not all(expected)
    summary = train(config(root), run_dir=tmp_path / "run", log=False)
    assert 0 <= summary["test"]["accuracy"] <= 1 and summary["test"]["n"] == 3
    model, _, _ = load_run(tmp_path / "run")
    with torch.no_grad():
        out = model(batch)
    assert torch.isfinite(out).all()


def test_fitted_state_is_saved_and_reused_by_eval_and_resume(tmp_path):
    root, rows = build_folder(tmp_path)
    cfg = config(root)
    train(cfg, run_dir=tmp_path / "run", log=False)
    stamp = (root / "img" / "0.png").stat().st_mtime_ns
    state = load_data_state(tmp_path / "run")
    assert state["classes"] == CLASSES and state["vocabs"]["text"]["itos"][:2] == ["<pad>", "<unk>"]
    # The manifest changes afterwards: new words in every row. Eval keeps the run's vocabulary and
    # label list (ids mean what they meant in training); resume refuses the changed data, whose
    # best epoch would have been selected on the old validation split, and goes on once it is restored.
    changed = [dict(r, caption="zebra words only", label=r["label"]) for r in rows]
    write_rows(root / "items.csv", changed)
    result = evaluate_run(tmp_path / "run")
    assert result["subsets"][0]["n"] == 3
    longer = dict(cfg, train={**cfg["train"], "epochs": 3})
    with pytest.raises(ValueError, match=r"--resume: the data of the train, val, test splits changed since the run started"):
        train(longer, run_dir=tmp_path / "run", resume=True, log=False)
    write_rows(root / "items.csv", rows)
    (root / "img" / "0.png").touch()  # a file a training row names: touched is changed (its modification time)
    with pytest.raises(ValueError, match=r"--resume: the data of the train split changed"):
        train(longer, run_dir=tmp_path / "run", resume=True, log=False)
    os.utime(root / "img" / "0.png", ns=(0, stamp))
    assert train(longer, run_dir=tmp_path / "run", resume=True, log=False)["epochs_run"] == 3
    assert load_data_state(tmp_path / "run") == state


def test_multilabel_task_trains_with_bce_and_reports_map(tmp_path):
    root, rows = build_folder(tmp_path)
    for i, r in enumerate(rows):
        r["tags"] = ";".join(sorted({r["label"], "pet" if r["label"] != "owl" else "bird"} | ({"night"} if i % 3 == 0 else set())))
    write_rows(root / "items.csv", rows)
    data = data_section(root, label={"column": "tags", "task": "multilabel"})
    ds = ManifestDataset(path=root / "items.csv", modalities=MODALITIES, label={"column": "tags", "task": "multilabel"})
    assert ds.classes == ["bird", "cat", "dog", "night", "owl", "pet"]
    assert ds[0]["label"].tolist() == [0, 1, 0, 1, 0, 1]
    summary = train(config(root, data=data, out_dim=6), run_dir=tmp_path / "run", log=False)
    assert summary["select_metric"] == "mAP"
    assert set(summary["test"]) >= {"mAP", "micro_f1", "exact_match", "loss"}
    result = evaluate_run(tmp_path / "run", levels=(0.0, 1.0))
    assert "mAP" in result["subsets"][0] and result["metric"] == "mAP"
    summary = explain_run(tmp_path / "run", out=tmp_path / "explained")  # every label's logit, per label
    assert summary["unit"] == "label" and [r["class"] for r in summary["classes"]] == ds.classes + ["all"]
    rows = list(csv.DictReader((tmp_path / "explained" / "shapley.csv").open()))
    assert len(rows) == summary["samples"] > 0
    for row in rows:
        for label in ds.classes:
            total = sum(float(row[f"phi:{label}:{m}"]) for m in sorted(MODALITIES))
            assert abs(total - (float(row[f"output:{label}"]) - float(row[f"v_none:{label}"]))) < 1e-4


def test_regression_task_trains_with_mse_and_reports_mae_rmse_r(tmp_path):
    root, rows = build_folder(tmp_path)
    data = data_section(root, label={"column": "score", "task": "regression"})
    cfg = config(root, data=data, out_dim=1, epochs=3)
    summary = train(cfg, run_dir=tmp_path / "run", log=False)
    assert summary["select_metric"] == "mae" and set(summary["test"]) >= {"mae", "rmse", "pearson_r", "loss"}
    explained = explain_run(tmp_path / "run", out=tmp_path / "explained")
    assert explained["unit"] == "target" and explained["value"] == "output" and [r["class"] for r in explained["classes"]] == ["target", "all"]
    header = (tmp_path / "explained" / "shapley.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["index", "row", "label:target", "output:target", "v_none:target"] and "interaction:target:audio+extra" in header
    card = (fz.hub.save_run(tmp_path / "run", tmp_path / "saved") / "README.md").read_text()
    assert "of each target's prediction on the test split, per target" in card and "| target | samples |" in card
    bad = config(root, data=data, out_dim=3)
    with pytest.raises(fz.ConfigError, match=r"model\.head\.out_dim: the data has 1 regression targets"):
        train(bad, run_dir=tmp_path / "bad", log=False)
    wrong_loss = config(root, data=data, out_dim=1, loss={"name": "cross_entropy"})
    with pytest.raises(fz.ConfigError, match=r"train\.loss\.name: 'cross_entropy' is not a regression loss"):
        train(wrong_loss, run_dir=tmp_path / "bad2", log=False)


def test_drawn_splits_are_stratified_seeded_and_disjoint():
    groups = ["a"] * 50 + ["b"] * 30
    out = draw_splits(groups, 0.2, 0.1, seed=0)
    assert out == draw_splits(groups, 0.2, 0.1, seed=0) and out != draw_splits(groups, 0.2, 0.1, seed=1)
    for g, n in (("a", 50), ("b", 30)):
        mine = [s for s, x in zip(out, groups) if x == g]
        assert mine.count("test") == round(n * 0.1) and mine.count("val") == round(n * 0.2)


def test_split_fractions_from_config(tmp_path):
    root, rows = build_folder(tmp_path)
    kw = {k: v for k, v in data_section(root).items() if k != "name"}
    kw["splits"] = {"val": 0.25, "test": 0.25, "seed": 3}
    sets = {s: ManifestDataset(**kw, split=s) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in sets.items()} == {"train": 6, "val": 6, "test": 6}  # 6 rows per class: 2 + 2 + 2
    lines = [{d.line_of(i) for i in range(len(d))} for d in sets.values()]
    assert not (lines[0] & lines[1]) and not (lines[0] & lines[2]) and not (lines[1] & lines[2])
    assert all(sorted(d.labels.tolist()) == [0, 0, 1, 1, 2, 2] for d in sets.values())  # stratified


BAD_ROWS = [
    ({"image": "img/nope.png"}, "image", r"file not found: .*nope\.png"),
    ({"image": "wav/0.wav"}, "image", r".*wav/0\.wav is not a PNG, JPEG, WebP or GIF image"),
    ({"audio": "img/0.png"}, "audio", r"cannot read audio"),
    ({"label": "emu", "split": "test"}, "label", r"label 'emu' is not in the label list \['cat', 'dog', 'owl'\]"),
    ({"feats": "1 2"}, "feats", r"2 features, expected 3"),
    ({"feats": "1 x 2"}, "feats", r"'x' is not a number"),
    ({"feats": "1 nan 2"}, "feats", r"the cell: value 1 is nan, features must be finite"),
    ({"label": ""}, "label", r"no label"),
]


@pytest.mark.parametrize("change, column, message", BAD_ROWS, ids=[c for _, c, _ in BAD_ROWS])
def test_bad_rows_name_file_line_and_column_or_are_skipped_and_reported(tmp_path, change, column, message):
    root, rows = build_folder(tmp_path)
    bad = dict(rows[0], **change)
    rows.insert(3, bad)  # line 5 of the file
    write_rows(root / "items.csv", rows)
    split = bad["split"]
    kw = {k: v for k, v in data_section(root).items() if k != "name"}
    with pytest.raises(ValueError, match=rf"items\.csv: line 5: column '{column}': {message}"):
        ManifestDataset(**kw, split=split)
    ds = ManifestDataset(**kw, split=split, on_error="skip")
    assert len(ds.skipped) == 1 and ds.skipped[0]["line"] == 5 and ds.skipped[0]["column"] == column
    assert all(ds.line_of(i) != 5 for i in range(len(ds)))


def test_skipped_rows_are_reported_in_the_run_folder(tmp_path):
    root, rows = build_folder(tmp_path)
    rows.insert(0, dict(rows[0], image="img/missing.png"))
    write_rows(root / "items.csv", rows)
    cfg = config(root, epochs=1, data=data_section(root, on_error="skip"))
    train(cfg, run_dir=tmp_path / "run", log=False)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["skipped_rows"] == {"train": 1} and report["rows"]["train"][0]["line"] == 2


def test_undecodable_image_found_at_load_time_names_the_row(tmp_path):
    root, rows = build_folder(tmp_path)
    (root / "img" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 4)
    kw = {k: v for k, v in data_section(root).items() if k != "name"}
    ds = ManifestDataset(**kw)  # the signature looks right: found when decoded
    with pytest.raises(ValueError, match=r"items\.csv: line 2: column 'image': cannot decode image .*0\.png"):
        ds[0]
    with pytest.raises(ValueError, match=r"line 2: column 'image': cannot decode image"):
        ManifestDataset(**kw, check="decode")
    assert len(ManifestDataset(**kw, check="decode", on_error="skip").skipped) == 1


def test_malformed_manifests_name_the_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image,label,split\na.png,1,train,extra\n")
    with pytest.raises(ValueError, match=r"m\.csv: line 2: 4 cells, the header has 3"):
        read_manifest(path)
    path = tmp_path / "m.jsonl"
    path.write_text('{"label": 1}\n{"label": \n')
    with pytest.raises(ValueError, match=r"m\.jsonl: line 2: not valid JSON"):
        read_manifest(path)
    path = tmp_path / "s.csv"
    path.write_text("feats,label,split\n1 2,1,training\n")
    with pytest.raises(ValueError, match=r"s\.csv: line 2: column 'split': split must be one of"):
        ManifestDataset(path=path, modalities={"f": {"column": "feats", "kind": "features"}}, label={"column": "label"})


def test_config_errors_name_the_key(tmp_path):
    root, _ = build_folder(tmp_path)
    cases = [
        ({"modalities": {"visual": {"column": "image", "kind": "video"}}}, r"data: modalities\.visual\.kind: one of"),
        ({"modalities": {"visual": {"column": "picture", "kind": "image"}}}, r"modalities\.visual\.column: .* has no column 'picture'"),
        ({"modalities": {"audio": {"column": "audio", "kind": "audio"}}}, r"modalities\.audio\.sample_rate: required"),
        ({"modalities": {"visual": {"column": "image", "kind": "image", "sise": 3}}}, r"modalities\.visual\.sise: unknown option"),
        ({"label": {"column": "label", "task": "ranking"}}, r"label\.task: one of"),
        ({"splits": {"val": 0.6, "test": 0.5}}, r"splits: val and test are fractions"),
    ]
    for change, message in cases:
        cfg = config(root, data={**data_section(root), **change})
        with pytest.raises(fz.ConfigError, match=message):
            train(cfg, run_dir=tmp_path / "run", log=False)


def test_memory_cache_gives_the_same_samples(tmp_path):
    root, _ = build_folder(tmp_path)
    kw = {k: v for k, v in data_section(root).items() if k != "name"}
    plain, cached = ManifestDataset(**kw, split="test"), ManifestDataset(**kw, split="test", cache="memory")
    for i in range(len(plain)):
        for m in plain.modalities:
            assert torch.equal(plain[i][m], cached[i][m])


def test_num_workers_decode_in_workers(tmp_path):
    root, _ = build_folder(tmp_path)
    kw = {k: v for k, v in data_section(root).items() if k != "name"}
    ds = ManifestDataset(**kw)
    loader = fz.data.make_loader(ds, 4, num_workers=2)
    batches = list(loader)
    assert sum(b["label"].shape[0] for b in batches) == len(ds)


@needs_avdigits
@pytest.mark.slow
def test_export_avdigits_gives_the_same_samples_through_the_manifest(tmp_path):
    items = export_avdigits(tmp_path / "avd", root=AVDIGITS, blank=0.2)
    rows = list(csv.DictReader(items.open()))
    assert [sum(r["split"] == s for r in rows) for s in ("train", "val", "test")] == [2000, 500, 500]
    blanked = sum(any(r[c] == "" for c in ("image", "audio", "caption")) for r in rows)
    assert 0.17 < blanked / len(rows) < 0.23
    config = load_config(ROOT / "configs/experiments/avdigits_manifest.yaml", [f"data.path={items}", "data.cache=none"])
    for split in ("val", "test"):
        manifest, direct = build_dataset(config, split), fz.create_dataset("avdigits", root=str(AVDIGITS), split=split)
        for i in range(0, len(direct), 50):
            a, b = manifest[i], direct[i]
            assert a["label"] == b["label"]
            if "visual" in a:
                torch.testing.assert_close(a["visual"], b["visual"], atol=1e-6, rtol=0)
            if "audio" in a:
                assert torch.equal(a["audio"], b["audio"])
    with pytest.raises(FileExistsError, match="exists; choose a new folder"):
        export_avdigits(tmp_path / "avd", root=AVDIGITS)


def test_disk_cache_gives_the_same_samples_and_notices_a_changed_file(tmp_path):
    root, _ = build_folder(tmp_path)
    kw = {k: v for k, v in data_section(root).items() if k != "name"}
    plain = ManifestDataset(**kw, split="test")
    cached = ManifestDataset(**kw, split="test", cache="disk", cache_dir=tmp_path / "cache")
    first = [cached[i] for i in range(len(cached))]
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 2 * len(cached)  # one image and one recording per sample
    again = ManifestDataset(**kw, split="test", cache="disk", cache_dir=tmp_path / "cache")
    for i in range(len(plain)):
        for m in plain.modalities:
            assert torch.equal(plain[i][m], first[i][m]) and torch.equal(plain[i][m], again[i][m])
    line = plain.line_of(0)
    image = root / "img" / f"{line - 2}.png"
    write_png(torch.zeros(1, 12, 12, dtype=torch.uint8), str(image))  # a new file: decoded again, not read stale
    os.utime(image, ns=(10**18, 10**18))
    assert torch.equal(again[0]["visual"], ManifestDataset(**kw, split="test")[0]["visual"])
    files[0].write_bytes(b"damaged")  # an unreadable cache file is decoded again
    assert all(torch.equal(again[i]["audio"], plain[i]["audio"]) for i in range(len(plain)))


def test_a_row_that_fails_in_a_loader_worker_is_one_line_in_the_cli(tmp_path):
    from fusionzoo.cli import _one_line

    root, _ = build_folder(tmp_path)
    (root / "img" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 4)
    ds = ManifestDataset(**{k: v for k, v in data_section(root).items() if k != "name"})
    with pytest.raises(ValueError) as caught:
        list(fz.data.make_loader(ds, 4, num_workers=1))
    assert "DataLoader worker" in str(caught.value)
    line = _one_line(caught.value)
    assert "\n" not in line and re.search(r"items\.csv: line 2: column 'image': cannot decode image .*0\.png", line)


def test_feature_files_npy_and_safetensors_with_a_key(tmp_path):
    from safetensors.numpy import save_file

    from fusionzoo.data.decode import CellError, read_features

    save_file({"a": np.ones(3, np.float32), "b": np.zeros(3, np.float32)}, str(tmp_path / "two.safetensors"))
    assert read_features("two.safetensors", tmp_path, key="b").tolist() == [0, 0, 0]
    with pytest.raises(CellError, match=r"holds \['a', 'b'\]; name one with the modality's key"):
        read_features("two.safetensors", tmp_path)
    np.save(tmp_path / "m.npy", np.ones((2, 3)))
    with pytest.raises(CellError, match=r"expected a 1-D numeric vector, got float64 of shape \[2, 3\]"):
        read_features("m.npy", tmp_path)
    assert read_features([1, 2.5], tmp_path).tolist() == [1.0, 2.5]  # a JSONL list


def test_a_word_level_encoder_carries_its_vocabulary_for_preprocess(tmp_path):
    from fusionzoo.hub import save_run

    root, _ = build_folder(tmp_path)
    train(config(root, epochs=1), run_dir=tmp_path / "run", log=False)
    ds = fz.create_dataset("manifest", **{k: v for k, v in data_section(root).items() if k != "name"})
    want = ds.vocab.encode(["a small cat", "the big dog"])
    model, _, _ = load_run(tmp_path / "run")
    assert torch.equal(model.encoders["text"].preprocess(["a small cat", "the big dog"]), want)
    save_run(tmp_path / "run", tmp_path / "saved")
    assert torch.equal(fz.from_pretrained(tmp_path / "saved").encoders["text"].preprocess(["a small cat", "the big dog"]), want)
    with pytest.raises(ValueError, match="text: TextEmbeddingEncoder has no vocabulary attached"):
        fz.create_encoder("text_embedding", vocab_size=32).preprocess(["a cat"])
