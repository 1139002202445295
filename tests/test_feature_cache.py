"""The frozen-feature cache: the same results as without it, keyed by weights, options and samples,
off for augmented inputs; frozen encoders are fixed feature extractors."""

import json
import re

import numpy as np
import pytest
import torch

import fusionzoo as fz
from fusionzoo.training import train
from fusionzoo.training.feature_cache import sample_digest
from fusionzoo.transfer import fix_frozen_encoders, freeze

from common import write_wav

pytest.importorskip("transformers")
pytest.importorskip("timm")

from test_foundation_workflows import fm_config  # noqa: E402


def _history(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _losses(run):
    return np.array([[r["train"]["loss"], r["val"]["loss"]] for r in _history(run)])


def _computed(out):
    return {m: int(n) for m, n in re.findall(r"train.feature_cache: (\w+) encoder's output cached \((\d+) samples computed", out)}


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["concat_mlp", "cross_attention"])
def test_cached_training_equals_uncached_training(tmp_path, fusion, capsys):
    plain = train(fm_config(tmp_path, fusion, epochs=3, strategy="linear_probe"), run_dir=tmp_path / "plain", log=False)
    cached = train(fm_config(tmp_path, fusion, epochs=3, strategy="linear_probe", feature_cache="memory"), run_dir=tmp_path / "cached", log=True)
    assert set(_computed(capsys.readouterr().out)) == {"audio", "text", "visual"}
    np.testing.assert_allclose(_losses(tmp_path / "cached"), _losses(tmp_path / "plain"), rtol=0, atol=1e-6)
    metrics = [json.loads((tmp_path / r / "metrics.json").read_text())["test"] for r in ("plain", "cached")]
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"] and abs(metrics[0]["loss"] - metrics[1]["loss"]) < 1e-6
    assert plain["epochs_run"] == cached["epochs_run"] == 3


@pytest.mark.slow
def test_the_disk_cache_is_reused_and_recomputed_for_a_changed_sample_weight_or_option(tmp_path, capsys):
    folder = tmp_path / "fc"

    def run(name, **changes):
        cfg = fm_config(tmp_path, epochs=1, strategy="linear_probe", feature_cache="disk", feature_cache_dir=str(folder))
        for key, value in changes.items():
            section, field = key.split(".")
            cfg["model"]["encoders"][section][field] = value
        train(cfg, run_dir=tmp_path / name, log=True)
        return _computed(capsys.readouterr().out)

    first = run("a")
    assert first["visual"] > 0 and first["audio"] > 0
    assert run("b") == {"audio": 0, "text": 0, "visual": 0}  # everything read back
    np.testing.assert_allclose(_losses(tmp_path / "b"), _losses(tmp_path / "a"), rtol=0, atol=0)
    write_wav(tmp_path / "data" / "wav" / "0.wav", 0.1 * np.ones(2000), 8000)  # one recording changed
    assert run("c") == {"audio": 1, "text": 0, "visual": 0}
    assert run("d", **{"visual.out_dim": 8})["visual"] == first["visual"]  # another option: another digest
    assert len(list(folder.glob("*.safetensors"))) == 4  # one file per encoder digest


def test_augmented_inputs_are_not_cached_with_a_notice(tmp_path, capsys):
    cfg = fm_config(tmp_path, epochs=1, strategy="linear_probe", feature_cache="memory")
    cfg["data"]["modalities"]["visual"]["augment"] = {"flip": 0.5}
    train(cfg, run_dir=tmp_path / "run", log=True)
    out = capsys.readouterr().out
    assert "'visual' is augmented at random in training, so its frozen encoder runs at every step (not cached)" in out
    assert set(_computed(out)) == {"audio", "text"}


def test_nothing_frozen_nothing_cached_and_bad_combinations_fail(tmp_path, capsys):
    train(fm_config(tmp_path, epochs=1, feature_cache="memory"), run_dir=tmp_path / "ft", log=True)
    assert "no encoder is frozen, so none is cached" in capsys.readouterr().out
    with pytest.raises(fz.ConfigError, match="train.feature_cache: caches .*|train.feature_cache: strategy gradual"):
        train(fm_config(tmp_path, epochs=1, strategy="gradual", feature_cache="memory"), run_dir=tmp_path / "g", log=False)
    with pytest.raises(fz.ConfigError, match=r"train.feature_cache_dir: invalid value"):
        fz.load_config(fm_config(tmp_path, feature_cache="memory", feature_cache_dir=str(tmp_path)))
    with pytest.raises(fz.ConfigError, match=r"train.feature_cache: invalid value 'ram'"):
        fz.load_config(fm_config(tmp_path, feature_cache="ram"))


def test_a_frozen_encoder_stays_in_eval_mode_for_tokens_and_pooled_outputs():
    torch.manual_seed(0)
    enc = fz.ENCODERS.get("hf_text").example()
    model = torch.nn.ModuleDict({"text": enc})
    holder = torch.nn.Module()
    holder.encoders = model
    freeze(holder, "encoders.*")
    assert fix_frozen_encoders(holder) == ["text"]
    holder.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    x = enc.example_input(3)
    a, b = enc.forward_tokens(x)[0], enc.forward_tokens(x)[0]
    assert torch.equal(a, b) and torch.equal(enc(x), enc(x))  # no dropout either way


def test_sample_digest_sees_content_dtype_and_shape():
    x = torch.arange(6, dtype=torch.float32)
    assert sample_digest(x) == sample_digest(x.clone())
    assert len({sample_digest(x), sample_digest(x.double()), sample_digest(x.view(2, 3)), sample_digest("a"), sample_digest("b")}) == 5
