"""Datasets, collation and the loader recipe."""

import io
import itertools
import re
import wave
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import fusionzoo as fz
from fusionzoo.data import collate, make_loader
from fusionzoo.data.avdigits import (
    FSDD_URL,
    MNIST_FILES,
    MNIST_URL,
    download_avdigits,
    read_wav,
    verify_checksums,
)

from common import AVDIGITS, MODALITIES, build_folder, mini_avdigits, needs_avdigits

# ---------------------------------------------------------------- collate and loader


def test_collate_pads_masks_and_records_lengths():
    samples = [
        {"visual": torch.ones(1, 4, 4), "audio": torch.ones(5), "text": torch.tensor([3, 4]), "label": 1},
        {"audio": torch.ones(3), "text": torch.tensor([5, 6, 7]), "label": 0},
        {"visual": torch.ones(1, 4, 4), "text": None, "label": 2},
    ]
    b = collate(samples)
    assert b["visual"].shape == (3, 1, 4, 4) and torch.equal(b["visual"][1], torch.zeros(1, 4, 4))
    assert b["audio"].shape == (3, 5) and b["audio_lengths"].tolist() == [5, 3, 5]
    assert b["audio"][1, 3:].abs().sum() == 0
    assert b["text"].tolist() == [[3, 4, 0], [5, 6, 7], [0, 0, 0]] and "text_lengths" not in b
    assert b["present"]["visual"].tolist() == [True, False, True]
    assert b["present"]["text"].tolist() == [True, True, False]
    assert b["label"].dtype == torch.long and b["label"].tolist() == [1, 0, 2]


@pytest.mark.parametrize(
    "samples, error, message",
    [
        ([], ValueError, "no samples"),
        ([{"visual": torch.ones(1, 4, 4)}], ValueError, "has no 'label'"),
        ([{"visual": torch.ones(1, 4, 4), "label": 0}, {"visual": torch.ones(1, 5, 4), "label": 0}], ValueError, "'visual' needs one shape"),
        ([{"text": torch.ones(2, dtype=torch.long), "label": 0}, {"text": torch.ones(2), "label": 0}], ValueError, "'text' samples disagree"),
        ([{"audio": [0.1, 0.2], "label": 0}], TypeError, "'audio' is a list"),
    ],
)
def test_collate_errors(samples, error, message):
    with pytest.raises(error, match=message):
        collate(samples)


def test_loader_is_seeded():
    ds = fz.create_dataset("synthetic", n=40, seed=3)
    order = lambda seed: torch.cat([b["label"] for b in make_loader(ds, 8, shuffle=True, seed=seed)])  # noqa: E731
    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))
    assert not make_loader(ds, 8).pin_memory or torch.cuda.is_available()


# ---------------------------------------------------------------- datasets, registry-wide


def _dataset_kwargs(name, tmp_path):
    """How the registry-wide contract test builds each dataset (a small folder where it needs files)."""
    if name in ("avdigits", "mnist"):
        if not (AVDIGITS / "manifest.csv").is_file():
            pytest.skip(f"the avdigits data is not at {AVDIGITS}")
        return {"root": str(AVDIGITS), "split": "test"}
    if name == "manifest":
        root, _ = build_folder(tmp_path)
        return {"path": str(root / "items.csv"), "modalities": {m: s for m, s in MODALITIES.items() if m != "extra"}, "label": {"column": "label"}}
    if name == "hf_dataset":  # the same folder as a Hugging Face dataset (save_to_disk), the files' bytes inside
        datasets = pytest.importorskip("datasets")
        root, rows = build_folder(tmp_path)
        parts = {}
        for hf_split, split in (("train", "train"), ("validation", "val"), ("test", "test")):
            mine = [r for r in rows if r["split"] == split]
            part = datasets.Dataset.from_dict({
                "image": [{"bytes": (root / r["image"]).read_bytes(), "path": None} for r in mine],
                "audio": [{"bytes": (root / r["audio"]).read_bytes(), "path": None} for r in mine],
                "caption": [r["caption"] for r in mine], "label": [r["label"] for r in mine],
            })
            parts[hf_split] = part.cast_column("image", datasets.Image()).cast_column("audio", datasets.Audio(decode=False))
        datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "hf"))
        return {"path": str(tmp_path / "hf"), "modalities": {m: s for m, s in MODALITIES.items() if m != "extra"}, "label": {"column": "label"}}
    if name == "webdataset":  # the same folder written as shards
        pytest.importorskip("webdataset")
        from fusionzoo.data.shards import write_shards

        root, _ = build_folder(tmp_path)
        section = {"name": "manifest", "path": str(root / "items.csv"), "modalities": {m: s for m, s in MODALITIES.items() if m != "extra"}, "label": {"column": "label"}}
        return {"path": str(write_shards(section, tmp_path / "shards", shard_size=4))}
    if name == "features":  # what `fusionzoo embed` writes: visual features, one of them missing
        tensors = {"features.visual": torch.randn(6, 5), "present.visual": torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.uint8),
                   "label": torch.arange(6) % 3, "index": torch.arange(6)}
        save_file(tensors, str(tmp_path / "train.safetensors"), metadata={"dims": '{"visual": 5}', "task": "multiclass", "num_classes": "3"})
        return {"path": str(tmp_path)}
    return {}


@pytest.mark.parametrize("name", fz.list_datasets())
def test_dataset_samples_follow_the_batch_contract(name, tmp_path):
    ds = fz.create_dataset(name, **_dataset_kwargs(name, tmp_path))
    first = list(itertools.islice(ds, 4)) if isinstance(ds, torch.utils.data.IterableDataset) else [ds[i] for i in range(4)]
    sample = first[0]
    assert set(sample) <= {"visual", "audio", "text", "label"} and isinstance(sample["label"], int)
    assert set(ds.modalities) <= {"visual", "audio", "text"}
    batch = collate(first)
    for m in ds.modalities:
        assert batch["present"][m].shape == (4,)
    features = name == "features"
    assert batch["visual"].dtype == torch.float32 and batch["visual"].dim() == (2 if features else 4)
    if features:
        assert batch["present"]["visual"].tolist() == [True, True, False, True]


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_splits_differ():
    a = fz.create_dataset("synthetic", n=50, seed=7)
    b = fz.create_dataset("synthetic", n=50, seed=7)
    t = fz.create_dataset("synthetic", n=50, seed=7, split="test")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.audio, b.audio)
    assert all(np.array_equal(x, y) for x, y in zip(a.texts, b.texts))
    assert not np.array_equal(a.images, t.images)
    s = a[0]
    assert s["visual"].shape == (1, 32, 32) and s["audio"].dtype == torch.float32
    assert 2400 <= s["audio"].shape[0] <= 4000 and s["text"].dtype == torch.long
    assert s["audio"].abs().max() > 0 and a.text(0)


def test_synthetic_has_three_independent_splits():
    splits = {s: fz.create_dataset("synthetic", n=40, val_n=24, seed=3, split=s) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [40, 24, 40]
    again = fz.create_dataset("synthetic", n=40, val_n=24, seed=3, split="val")
    assert np.array_equal(again.images, splits["val"].images)  # the val stream is a function of the seed
    for a, b in (("train", "val"), ("val", "test")):
        assert not np.array_equal(splits[a].images[:24], splits[b].images[:24])


def test_synthetic_bayes_rates_need_fusion():
    ds = fz.create_dataset("synthetic", n=4000, seed=0)
    single = {m: ds.bayes_accuracy([m]) for m in ("visual", "audio", "text")}
    pairs = {p: ds.bayes_accuracy(p) for p in (("visual", "audio"), ("visual", "text"), ("audio", "text"))}
    assert max(single.values()) <= 0.5
    assert all(max(single.values()) < v < 0.95 for v in pairs.values())
    assert ds.bayes_accuracy(["visual", "audio", "text"]) == 1.0
    assert abs(single["text"] - 0.25 - 0.25 * ds.redundancy) < 0.03


def test_synthetic_missing_rate_never_drops_everything():
    ds = fz.create_dataset("synthetic", n=400, seed=0, missing_rate=0.6)
    kept = np.array([[m in ds[i] for m in ("visual", "audio", "text")] for i in range(len(ds))])
    assert kept.any(axis=1).all() and 0.3 < 1 - kept.mean() < 0.6


@pytest.mark.parametrize(
    "kwargs, message",
    [({"num_classes": 9}, "num_classes must be one of"), ({"noise": 2.0}, "noise must be in"), ({"split": "validation"}, "split")],
)
def test_synthetic_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fz.create_dataset("synthetic", **kwargs)


def _train(mods, epochs, seed=0):
    torch.manual_seed(seed)
    train = fz.create_dataset("synthetic", n=2000, seed=seed)
    test = fz.create_dataset("synthetic", n=1000, seed=seed, split="test")
    enc = {
        "visual": {"name": "visual_cnn", "in_channels": 1, "channels": [8, 16], "out_dim": 32},
        "audio": {"name": "audio_spec_cnn", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 32, "channels": [8, 16], "out_dim": 32},
        "text": {"name": "text_embedding", "vocab_size": len(train.vocab), "embed_dim": 32, "out_dim": 32},
    }
    model = fz.build_model(
        {"model": {"encoders": {m: enc[m] for m in mods}, "fusion": {"name": "concat_mlp", "out_dim": 64, "hidden_dims": [64]}, "head": {"name": "linear", "out_dim": 8}}}
    )
    loader = make_loader(train, 64, shuffle=True, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * len(loader))
    keep = lambda b: {k: v for k, v in b.items() if k in mods or k == "label" or k.removesuffix("_lengths") in mods}  # noqa: E731
    for _ in range(epochs):
        model.train()
        for b in loader:
            b = keep(b)
            loss = torch.nn.functional.cross_entropy(model(b), b["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(keep(b)).argmax(1) == b["label"]).sum().item() for b in make_loader(test, 250))
    return correct / len(test)


@pytest.mark.slow
def test_synthetic_fused_model_reaches_95_percent_and_one_modality_does_not():
    assert _train(("visual", "audio", "text"), epochs=6) >= 0.95
    assert _train(("text",), epochs=3) <= 0.5  # text is the most informative single modality


# ---------------------------------------------------------------- avdigits


def _readme_pairs():
    text = (AVDIGITS / "README.md").read_text()
    return [(p, s, int(i)) for p, s, i in re.findall(r"\| (audio/\S+\.wav) \| (train|test)[^|]*\| (\d+) \|", text)]


@needs_avdigits
def test_avdigits_reproduces_the_readme_pairs():
    pairs = _readme_pairs()
    assert len(pairs) == 6
    for split in ("train", "val", "test"):  # the README's "train" rows are our train and val
        ds = fz.create_dataset("avdigits", root=str(AVDIGITS), split=split)
        paths = [r["audio_path"] for r in ds.rows]
        for path, s, index in pairs:
            if path in paths:
                assert s == ("test" if split == "test" else "train")
                assert ds.mnist_index[paths.index(path)] == index, path


@needs_avdigits
def test_avdigits_split_sizes_and_samples():
    test = fz.create_dataset("avdigits", root=str(AVDIGITS), split="test")
    assert len(test) == 500 and {r["speaker"] for r in test.rows} == {"jackson"}
    assert np.bincount(test.labels).tolist() == [50] * 10
    s = test[0]
    assert s["visual"].shape == (1, 28, 28) and s["audio"].dim() == 1 and s["audio"].shape[0] <= 8000
    assert abs(float(s["audio"].abs().max()) - 1.0) < 1e-6  # peak-normalised
    epoch1 = fz.create_dataset("avdigits", root=str(AVDIGITS), split="test", pairing_epoch=1)
    assert not np.array_equal(epoch1.mnist_index, test.mnist_index)
    hard = fz.create_dataset("avdigits", root=str(AVDIGITS), split="test", difficulty="hard")
    assert not np.allclose(hard.images, test.images) and not np.allclose(hard.audio, test.audio)
    assert np.array_equal(hard.lengths, test.lengths)


@needs_avdigits
@pytest.mark.parametrize("difficulty", ["clean", "hard"])
def test_avdigits_validation_is_a_held_out_training_speaker(difficulty):
    splits = {s: fz.create_dataset("avdigits", root=str(AVDIGITS), split=s, difficulty=difficulty) for s in ("train", "val", "test")}
    speakers = {s: {r["speaker"] for r in d.rows} for s, d in splits.items()}
    assert speakers["val"] == {"theo"} and speakers["test"] == {"jackson"}
    assert speakers["train"] == {"george", "lucas", "nicolas", "yweweler"}
    assert [len(d) for d in splits.values()] == [2000, 500, 500]
    assert not set(splits["train"].mnist_index) & set(splits["val"].mnist_index)  # no image in both
    other = fz.create_dataset("avdigits", root=str(AVDIGITS), split="val", val_speaker="george", difficulty=difficulty)
    assert {r["speaker"] for r in other.rows} == {"george"}
    with pytest.raises(ValueError, match="val_speaker 'jackson' is not a training speaker"):
        fz.create_dataset("avdigits", root=str(AVDIGITS), split="val", val_speaker="jackson")


@needs_avdigits
def test_avdigits_checksums_verify():
    assert verify_checksums(AVDIGITS) == 3006  # README, manifest, 3000 wavs, 4 MNIST files


@needs_avdigits
def test_avdigits_bad_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.csv not found.*download=True"):
        fz.create_dataset("avdigits", root=str(tmp_path / "nothing"))
    root, rows = mini_avdigits(tmp_path)
    assert len(fz.create_dataset("avdigits", root=str(root), split="test")) == 6
    bad = root / rows[0]["audio_path"]
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(ValueError, match=f"{bad.name}.*truncated"):
        read_wav(bad)
    with wave.open(str(bad), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(100, dtype="<i2").tobytes())
    with pytest.raises(ValueError, match=f"{bad.name}: expected mono 16-bit PCM at 8000 Hz, got 1 channel.*16000 Hz"):
        read_wav(bad)
    (root / rows[1]["audio_path"]).unlink()
    with pytest.raises(FileNotFoundError, match=rows[1]["audio_path"].split("/")[1]):
        read_wav(root / rows[1]["audio_path"])
    (root / "checksums.sha256").write_text(f"{'0' * 64}  {rows[2]['audio_path']}\n")
    with pytest.raises(ValueError, match=f"checksum mismatch for .*{rows[2]['audio_path'].split('/')[1]}"):
        verify_checksums(root)


@needs_avdigits
@pytest.mark.slow
def test_avdigits_download_with_a_local_fetch(tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for wav in sorted((AVDIGITS / "audio").glob("*.wav")):
            z.write(wav, f"free-spoken-digit-dataset-x/recordings/{wav.name}")
    served = {FSDD_URL: archive.getvalue()}
    for split in ("train", "test"):
        for name in MNIST_FILES[split]:
            served[MNIST_URL.format(name)] = (AVDIGITS / "mnist" / name).read_bytes()
    fetched = []

    def fetch(url):
        fetched.append(url)
        return served[url]

    root = tmp_path / "downloaded"
    download_avdigits(root, fetch=fetch)
    assert len(fetched) == 5
    assert (root / "manifest.csv").read_text() == (AVDIGITS / "manifest.csv").read_text()
    ds = fz.create_dataset("avdigits", root=str(root), split="test")
    ref = fz.create_dataset("avdigits", root=str(AVDIGITS), split="test")
    assert np.array_equal(ds.audio, ref.audio) and np.array_equal(ds.images, ref.images)
    download_avdigits(root, fetch=fetch)  # everything present: nothing fetched again
    assert len(fetched) == 5
    served[MNIST_URL.format("t10k-labels-idx1-ubyte.gz")] = served[MNIST_URL.format("train-labels-idx1-ubyte.gz")]
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz has MD5"):
        download_avdigits(root, fetch=fetch)
