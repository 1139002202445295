"""WebDataset shards: `fusionzoo data shard` round trip, the stream's epoch (its length, its order as a
function of the seed and the epoch, readers on distinct shards), resume, errors naming the shard,
the sample and the column, and two torchrun ranks on disjoint samples."""

import shutil
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from fusionzoo.cli import main
from fusionzoo.config import build_dataset, load_config
from fusionzoo.data import make_loader
from fusionzoo.data.stream import worker_quota
from fusionzoo.training import evaluate_run, train

from common import ROOT, build_folder, data_section, model_section, subprocess_env

wds = pytest.importorskip("webdataset")
from fusionzoo.data.shards import WebDataset, write_shards  # noqa: E402

MODEL = model_section()


def _shards(tmp_path, shard_size=4, **folder):
    """A manifest folder (36 rows: 24 train, 6 val, 6 test) and its shards; returns (section, index)."""
    root, _ = build_folder(tmp_path, n_per_class=12, **folder)
    section = data_section(root)
    return section, write_shards(section, tmp_path / "shards", shard_size=shard_size)


def _key(sample):
    """A sample as comparable values (every tensor as a tuple)."""
    return tuple(sorted((k, tuple(np.round(torch.as_tensor(v).flatten().tolist(), 5))) for k, v in sample.items()))


def _ids(batches):
    return [tuple(np.round(v.tolist(), 4)) for b in batches for v in b["extra"]]


def test_shards_round_trip_every_split_to_the_manifest_s_samples(tmp_path):
    section, index = _shards(tmp_path, blank_every=5)
    written = json.loads(index.read_text())
    assert [sum(p["samples"]) for p in written["splits"].values()] == [24, 6, 6]
    assert written["splits"]["train"]["samples"] == [4] * 6 and written["fitted"]["classes"] == ["cat", "dog", "owl"]
    for split in ("train", "val", "test"):
        manifest = build_dataset(load_config({"data": section}), split)
        stream = WebDataset(path=index, split=split)
        assert len(stream) == len(manifest) and stream.classes == manifest.classes and stream.fitted["vocabs"] == manifest.fitted["vocabs"]
        assert sorted(map(_key, stream), key=str) == sorted((_key(manifest[i]) for i in range(len(manifest))), key=str), split
    with tarfile.open(tmp_path / "shards" / "train-000000.tar") as tar:  # files kept as they were, texts as written
        names = tar.getnames()
    assert any(n.endswith(".visual.png") for n in names) and any(n.endswith(".audio.wav") for n in names)
    assert any(n.endswith(".extra.npy") for n in names) and any(n.endswith(".text.txt") for n in names)


def test_data_shard_cli_prints_the_splits_and_refuses_a_full_folder(tmp_path, capsys):
    root, _ = build_folder(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"data": data_section(root), "model": MODEL}))
    assert main(["data", "shard", str(config), str(tmp_path / "out"), "--shard-size", "5"]) == 0
    out = capsys.readouterr().out
    assert "train: 12 samples in 3 shards" in out and "name: webdataset" in out
    assert main(["data", "shard", str(config), str(tmp_path / "out"), "--shard-size", "5"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["data", "shard", str(config), str(tmp_path / "other"), "--shard-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--shard-size: a number of samples >= 1" in err
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("samples, batch, drop_last", [(24, 4, False), (25, 4, False), (25, 4, True), (7, 8, False), (3, 1, False)])
def test_worker_quotas_add_up_to_the_rank_s_batches(samples, batch, drop_last):
    for workers in (1, 2, 3):
        quotas = [worker_quota(samples, batch, drop_last, workers, w) for w in range(workers)]
        assert sum(quotas) == (samples // batch * batch if drop_last else samples)
        assert all(q % batch == 0 for q in quotas[:-1] if q) or not drop_last


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_of_equal_shards_is_every_training_sample_once_and_a_function_of_seed_and_epoch(tmp_path, workers):
    _, index = _shards(tmp_path)
    ds = WebDataset(path=index, split="train", shuffle_buffer=5)
    everything = sorted(_ids([{"extra": torch.stack([s["extra"] for s in ds])}]))

    def epoch(seed, e):
        loader = make_loader(ds, 4, shuffle=True, num_workers=workers, seed=seed)
        loader.dataset.set_epoch(e)
        batches = list(loader)
        assert len(batches) == len(loader) == 6 and loader.persistent_workers is False
        return _ids(batches)

    first = epoch(0, 0)
    assert sorted(first) == everything  # one pass: each sample once
    assert epoch(0, 0) == first and epoch(0, 1) != first and epoch(1, 0) != first
    longer = WebDataset(path=index, split="train", samples_per_epoch=40, shuffle_buffer=0)
    loader = make_loader(longer, 8, shuffle=True, num_workers=workers, drop_last=True)
    assert len(loader) == 5 and sum(len(b["label"]) for b in loader) == 40
    in_order = [_ids([b]) for b in make_loader(ds, 4, num_workers=workers)]  # evaluation: in shard order
    assert sum(in_order, []) == sum((_ids([b]) for b in make_loader(ds, 4)), [])


def test_too_few_shards_for_the_readers_is_one_clear_error(tmp_path):
    _, index = _shards(tmp_path, shard_size=12)  # 2 training shards
    loader = make_loader(WebDataset(path=index, split="train"), 4, shuffle=True, num_workers=0)
    assert len(list(loader)) == 6
    ds = WebDataset(path=index, split="train").stream(batch_size=4, shuffle=True, rank=0, world=3)
    with pytest.raises(ValueError, match=r"2 train shards cannot feed 3 readers \(3 ranks x 1 workers\)"):
        next(iter(ds))


def test_a_streamed_run_resumes_bitwise_and_evaluates_under_every_subset(tmp_path):
    _, index = _shards(tmp_path, blank_every=5)
    config = {"seed": 0, "data": {"name": "webdataset", "path": str(index), "shuffle_buffer": 6}, "model": MODEL,
              "train": {"epochs": 2, "batch_size": 4, "lr": 0.01, "modality_dropout": 0.2}}
    full = train(config, run_dir=tmp_path / "full", log=False)
    part = tmp_path / "part"
    train(config, run_dir=part, log=False)
    (part / "checkpoints" / "last").write_text("epoch-001\n")  # interrupted in epoch 2
    shutil.rmtree(part / "checkpoints" / "epoch-002")
    resumed = train(config, run_dir=part, resume=True, log=False)
    assert resumed["weights_sha256"] == full["weights_sha256"]
    result = evaluate_run(tmp_path / "full")
    assert len(result["subsets"]) == 15 and all(r["n"] == 6 for r in result["subsets"])
    with pytest.raises(ValueError, match="train.feature_cache: caches by sample index, and webdataset data streams"):
        train({**config, "train": {**config["train"], "feature_cache": "memory", "strategy": "linear_probe"}}, run_dir=tmp_path / "fc", log=False)


def _tar(path, samples):
    with path.open("wb") as f, wds.TarWriter(f, encoder=False) as w:
        for s in samples:
            w.write(s)


def _png(value):
    from torchvision.io import encode_png

    return encode_png(torch.full((1, 8, 8), value, dtype=torch.uint8)).numpy().tobytes()


def test_shards_written_elsewhere_with_a_column_spec_and_errors_naming_the_sample(tmp_path):
    samples = [{"__key__": f"s{i}", "jpg": _png(40 * (i % 3)), "txt": f"word{i % 3}".encode(), "cls": str(i % 3).encode()} for i in range(9)]
    del samples[4]["jpg"]  # an absent member: a missing modality
    for split, part in (("train", samples[:6]), ("val", samples[6:]), ("test", samples[6:])):
        _tar(tmp_path / f"{split}-0.tar", part)
    section = {"shards": {s: str(tmp_path / f"{s}-{{0..0}}.tar") for s in ("train", "val", "test")},
               "modalities": {"visual": {"column": "jpg", "kind": "image", "size": [8, 8]}, "text": {"column": "txt", "kind": "text"}},
               "label": {"column": "cls"}}
    train_set = WebDataset(**section, split="train")  # fitted and counted by one pass
    assert train_set.classes == ["0", "1", "2"] and len(train_set) == 6 and len(train_set.vocabs["text"]) > 3
    got = list(train_set)
    assert sum("visual" in s for s in got) == 5 and [s["label"] for s in got] == [0, 1, 2, 0, 1, 2]
    val = WebDataset(**section, split="val", fitted=train_set.fitted)
    assert len(val) == 3
    with pytest.raises(ValueError, match=r"modalities.visual.column: no sample of .* has a member or json field 'png'"):
        WebDataset(**{**section, "modalities": {"visual": {"column": "png", "kind": "image"}}}, split="train")
    samples[1]["jpg"] = b"not an image"
    _tar(tmp_path / "train-0.tar", samples[:6])
    with pytest.raises(ValueError, match=r"train-0.tar: sample 's1': column 'jpg': .* is not a PNG"):
        list(WebDataset(**section, split="train"))
    with pytest.warns(UserWarning, match="skipped"):
        assert len(list(WebDataset(**section, split="train", on_error="skip"))) == 5
    with pytest.raises(ValueError, match="give path .* or shards"):
        WebDataset(split="train")


def test_an_index_that_is_not_one_is_named(tmp_path):
    (tmp_path / "shards.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a shard index of format 1"):
        WebDataset(path=tmp_path / "shards.json")
    with pytest.raises(ValueError, match="no shard index at"):
        WebDataset(path=tmp_path / "none.json")


RANKS = """
import json, sys, torch, torch.distributed as dist
from fusionzoo.data import make_loader
from fusionzoo.data.shards import WebDataset
dist.init_process_group("gloo")
loader = make_loader(WebDataset(path=sys.argv[1], split="train", shuffle_buffer=4), 3, shuffle=True, num_workers=2, seed=0)
loader.dataset.set_epoch(1)
seen = [[round(v, 4) for v in x.tolist()] for b in loader for x in b["extra"]]
json.dump({"seen": seen, "batches": len(loader)}, open(f"{sys.argv[2]}/rank{dist.get_rank()}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_torchrun_ranks_stream_disjoint_samples(tmp_path):
    from test_training import _free_port

    _, index = _shards(tmp_path, shard_size=3)  # 8 training shards: 2 ranks x 2 workers read 2 each, 2 batches of 3 each
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}", str(script), str(index), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**subprocess_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    a, b = ({tuple(v) for v in r["seen"]} for r in ranks)
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 12 and ranks[0]["batches"] == 4
    assert not a & b and len(a | b) == 24  # disjoint, and together every training sample


def test_a_streamed_hugging_face_dataset_gives_the_map_style_samples_and_trains(tmp_path):
    pytest.importorskip("datasets")
    from test_sources import _hf_dict, _rows

    root, _ = build_folder(tmp_path, n_per_class=12, blank_every=5)
    _hf_dict(root, _rows(root)).save_to_disk(str(tmp_path / "hf"))
    mapped = {"name": "hf_dataset", "path": str(tmp_path / "hf"), **{k: v for k, v in data_section(root).items() if k not in ("name", "path")}, "root": str(root)}
    streamed = {**mapped, "streaming": True, "num_shards": 6, "shuffle_buffer": 5}
    fitted = {}
    for split in ("train", "val", "test"):
        a = build_dataset(load_config({"data": mapped}), split, fitted.get("map"))
        b = build_dataset(load_config({"data": streamed}), split, fitted.get("stream"))
        fitted = fitted or {"map": a.fitted, "stream": b.fitted}
        assert len(b) == len(a) and b.classes == a.classes and b.fitted["vocabs"] == a.fitted["vocabs"]
        assert sorted(map(_key, b), key=str) == sorted((_key(a[i]) for i in range(len(a))), key=str), split
    ds = build_dataset(load_config({"data": streamed}), "train")
    batches = list(make_loader(ds, 4, shuffle=True, num_workers=2))
    assert len(batches) == 6 and sum(len(b["label"]) for b in batches) == 24
    run = train({"seed": 0, "data": streamed, "model": MODEL, "train": {"epochs": 1, "batch_size": 4, "lr": 0.01}}, run_dir=tmp_path / "run", log=False)
    assert run["test"]["n"] == 6
    with pytest.raises(Exception, match="data: folds: only for a map-style dataset"):
        build_dataset(load_config({"data": {**streamed, "folds": {"k": 3, "fold": 0}}}), "train")
    with pytest.raises(Exception, match="data: num_shards: only for a streamed dataset"):
        build_dataset(load_config({"data": {**mapped, "num_shards": 4}}), "train")
