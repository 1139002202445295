"""A three-modality manifest (text, image and audio columns, some cells empty) through foundation
encoders (``hf_text`` + ``timm`` + ``hf_audio``): training with pooled and token fusion, evaluation
under every subset, resume, save / load without the original model folders, ``compare``."""

import json
import shutil

import pytest
import torch

import fusionzoo as fz
from fusionzoo.cli import main
from fusionzoo.config import build_dataset, load_config
from fusionzoo.data.loader import make_loader
from fusionzoo.encoders.base import preprocessors
from fusionzoo.hub import save_run
from fusionzoo.training import evaluate_run, load_run, train
from fusionzoo.training.checkpoint import load_data_state

from common import build_folder, config_file
from foundation import AUDIO_CONFIGS, text_model

pytest.importorskip("transformers")
pytest.importorskip("timm")


def fm_config(tmp_path, fusion="concat_mlp", epochs=2, **train_kw):
    """The manifest of ``common.build_folder`` (every third row blanks one modality), raw columns."""
    root = tmp_path / "data"
    if not root.exists():
        build_folder(tmp_path, blank_every=3)
    text = tmp_path / "bert"
    if not text.exists():
        text_model(text)
    return {
        "seed": 0,
        "data": {
            "name": "manifest", "path": str(root / "items.csv"), "label": {"column": "label"},
            "modalities": {
                "visual": {"column": "image", "kind": "image"},
                "audio": {"column": "audio", "kind": "audio", "sample_rate": 8000},
                "text": {"column": "caption", "kind": "text"},
            },
        },
        "model": {
            "encoders": {
                "text": {"name": "hf_text", "model": str(text), "out_dim": 16},
                "visual": {"name": "timm", "model": "test_resnet", "out_dim": 16},
                "audio": {"name": "hf_audio", "model": dict(AUDIO_CONFIGS["wav2vec2"]), "sample_rate": 8000, "out_dim": 16},
            },
            "fusion": {"name": fusion, "out_dim": 16},
            "head": {"name": "linear", "out_dim": 3},
        },
        "train": {"epochs": epochs, "batch_size": 4, "lr": 0.002, **train_kw},
    }


def _test_batches(run_dir, model):
    cfg = load_config(run_dir / "config.yaml")
    test_set = build_dataset(cfg, "test", load_data_state(run_dir))
    return list(make_loader(test_set, 8, preprocess=preprocessors(model.encoders)))


def test_the_manifest_gives_raw_text_and_decoded_media_to_encoders_that_own_preprocessing(tmp_path):
    cfg = load_config(fm_config(tmp_path))
    ds = build_dataset(cfg, "train")
    assert ds.raw == ("audio", "text", "visual") and ds.fitted["vocabs"] == {}  # no word vocabulary for a tokenizing encoder
    samples = [ds[i] for i in range(len(ds))]
    assert any(isinstance(s.get("text"), str) for s in samples)
    assert any("text" not in s for s in samples)  # a blank caption is a missing text
    model = fz.build_model(cfg)
    batch = next(iter(make_loader(ds, 6, preprocess=preprocessors(model.encoders))))
    assert {"input_ids", "attention_mask"} <= set(batch["text"]) and batch["text"]["input_ids"].shape[0] == 6
    assert batch["visual"].shape[1:] == (3, 160, 160)  # grey 12x12 PNGs, resized to the model's input, RGB
    assert batch["audio"]["input_values"].shape[0] == 6
    with pytest.raises(fz.ConfigError, match="modalities.text.min_freq: a word-vocabulary option"):
        cfg2 = fm_config(tmp_path)
        cfg2["data"]["modalities"]["text"]["min_freq"] = 2
        build_dataset(load_config(cfg2), "train")


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["concat_mlp", "attention", "cross_attention"])
def test_trains_evaluates_every_subset_and_loads_back_identically(tmp_path, fusion):
    run = tmp_path / "run"
    result = train(fm_config(tmp_path, fusion), run_dir=run, log=False)
    assert result["epochs_run"] == 2
    evaluated = evaluate_run(run, levels=(0.0, 0.5))
    subsets = {tuple(r["modalities"]) for r in evaluated["subsets"]}
    assert len(subsets) == 7 and ("audio", "text", "visual") in subsets
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in evaluated["subsets"])
    model, _, _ = load_run(run)
    batches = _test_batches(run, model)
    save_run(run, tmp_path / "saved")
    shutil.rmtree(tmp_path / "bert")  # the saved folder keeps the tokenizer and the architecture itself
    loaded = fz.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        for batch in batches:
            assert torch.equal(loaded(batch), model(batch))
    assert (tmp_path / "saved" / "encoders" / "text" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_resume_is_bitwise_and_eval_uses_the_run_s_saved_preprocessing(tmp_path):
    cfg = fm_config(tmp_path, "attention")
    full = train(cfg, run_dir=tmp_path / "full", log=False)
    part = tmp_path / "part"
    train(cfg, run_dir=part, log=False)
    (part / "checkpoints" / "last").write_text("epoch-001\n")
    shutil.rmtree(part / "checkpoints" / "epoch-002")
    shutil.rmtree(tmp_path / "bert")  # resume and eval read the run's copy of the tokenizer
    resumed = train(cfg, run_dir=part, resume=True, log=False)
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert evaluate_run(part, levels=(0.0,))["subsets"][0]["accuracy"] == json.loads((part / "metrics.json").read_text())["test"]["accuracy"]


@pytest.mark.slow
def test_compare_runs_foundation_encoders_with_several_fusions(tmp_path, capsys):
    path = config_file(tmp_path, fm_config(tmp_path, epochs=1))
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--fusions", "concat_mlp,attention", "--seeds", "0", "--out", str(out)]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(r["cell"] for r in board["cells"]) == ["fusion=attention", "fusion=concat_mlp"]
    assert "subset/audio+text+visual/accuracy" in board["cells"][0]["metrics"]


def test_noise_corrupts_a_preprocessed_input_inside_its_mask():
    from fusionzoo.training.evaluate import add_noise

    batch = {"text": {"input_ids": torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}}
    noisy = add_noise(batch, "text", 1.0, torch.Generator().manual_seed(0))["text"]
    assert torch.equal(noisy["attention_mask"], batch["text"]["attention_mask"])
    assert noisy["input_ids"][1, 3] == 0 and not torch.equal(noisy["input_ids"], batch["text"]["input_ids"])


@pytest.mark.slow
@pytest.mark.compile
def test_export_pt2_of_a_saved_foundation_model_matches_eager_on_real_batches(tmp_path):
    from fusionzoo.export import ServingModel

    run = tmp_path / "run"
    train(fm_config(tmp_path, "attention", epochs=1), run_dir=run, log=False)
    save_run(run, tmp_path / "saved")
    out = tmp_path / "m.pt2"
    assert main(["export", str(tmp_path / "saved"), "--format", "pt2", "--out", str(out)]) == 0
    program = torch.export.load(out).module()
    model = fz.from_pretrained(tmp_path / "saved")
    serving = ServingModel(model)
    assert serving.input_names[:4] == ["audio_input_values", "audio_attention_mask", "text_input_ids", "text_attention_mask"]
    for batch in _test_batches(run, model):  # real token and waveform lengths, other than the traced ones
        inputs = [batch[m][k] for m in serving.modalities if m in serving.keys for k in serving.keys[m]]
        inputs += [batch["visual"]] + [batch["present"][m] for m in serving.modalities]
        with torch.no_grad():
            torch.testing.assert_close(program(*inputs), model(batch), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_an_ensemble_reads_each_run_through_its_own_preprocessing(tmp_path):
    from fusionzoo.training import ensemble_runs

    cfg = fm_config(tmp_path, epochs=1)
    train(cfg, run_dir=tmp_path / "foundation", log=False)
    words = dict(cfg, model={
        "encoders": {"text": {"name": "text_embedding", "vocab_size": 32, "embed_dim": 8, "out_dim": 8},
                     "audio": {"name": "audio_spec_cnn", "sample_rate": 8000, "n_fft": 128, "hop_length": 64, "n_mels": 16, "channels": [4], "out_dim": 8}},
        "fusion": {"name": "concat_mlp", "out_dim": 8}, "head": {"name": "linear", "out_dim": 3}})
    train(words, run_dir=tmp_path / "words", log=False)  # the same data, read as word ids
    result = ensemble_runs([tmp_path / "foundation", tmp_path / "words"], out=tmp_path / "ens")
    full = result["test"][0]
    assert full["modalities"] == ["audio", "text", "visual"] and len(result["test"]) == 7
    for r, run in enumerate(("foundation", "words")):
        assert full["runs"][r] == json.loads((tmp_path / run / "metrics.json").read_text())["test"]["accuracy"]
