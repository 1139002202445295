"""Workflows run end to end at a tiny size: transfer across tasks with each fine-tuning strategy."""

import pytest
import torch
from safetensors.torch import load_file

from fusionzoo.config import ConfigError
from fusionzoo.training import latest_checkpoint, selected_checkpoint, train

from common import AVDIGITS, ROOT, needs_avdigits


def cfg(num_classes, seed, **train_opts):
    return {
        "seed": seed,
        "data": {"name": "synthetic", "n": 96, "num_classes": num_classes, "seed": seed, "labels_per_class": 4},
        "model": {
            "encoders": {
                "visual": {"name": "visual_cnn", "in_channels": 1, "channels": [4], "out_dim": 8},
                "text": {"name": "text_embedding", "vocab_size": 64, "embed_dim": 8, "out_dim": 8},
            },
            "fusion": {"name": "concat_mlp", "out_dim": 16, "hidden_dims": [16]},
            "head": {"name": "linear", "out_dim": num_classes},
        },
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, **train_opts},
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    run = tmp_path_factory.mktemp("wf") / "source"
    train(cfg(8, 0), run_dir=run, log=False)
    return run


def weights(run):
    return load_file(str(selected_checkpoint(run) / "model.safetensors"))


def test_linear_probe_from_source_keeps_encoders_and_skips_the_head(source, tmp_path):
    target = tmp_path / "probe"
    train(cfg(12, 1, strategy="linear_probe", init_from={"path": str(source)}), run_dir=target, log=False)
    src, dst = weights(source), weights(target)
    enc = [k for k in src if k.startswith("encoders.")]
    assert enc and all(torch.equal(src[k], dst[k]) for k in enc)  # frozen, BatchNorm statistics included
    assert not torch.equal(src["fusion.mlp.0.weight"], dst["fusion.mlp.0.weight"])  # trained on the target
    report = (target / "init_report.txt").read_text()
    assert "mismatched      2  head.fc.bias model [12] file [8], head.fc.weight model [12, 16] file [8, 16]" in report


@pytest.mark.parametrize("strategy", ["finetune", "gradual"])
def test_finetune_and_gradual_move_the_encoders(source, tmp_path, strategy):
    target = tmp_path / strategy
    opts = {"strategy": strategy, "init_from": {"path": str(source)}, "lr_mult": {"encoders.*": 0.5}}
    train(cfg(12, 1, **opts), run_dir=target, log=False)
    src, dst = weights(source), weights(target)
    assert not torch.equal(src["encoders.text.embedding.weight"], dst["encoders.text.embedding.weight"])


def test_init_from_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.init_from: .*not found"):
        train(cfg(8, 0, init_from={"path": str(tmp_path / "nope.pt")}), run_dir=tmp_path / "r", log=False)
    with pytest.raises(ConfigError, match=r"train\.init_from\.freez: unknown key"):
        train(cfg(8, 0, init_from={"path": "x", "freez": []}), run_dir=tmp_path / "r", log=False)
    with pytest.raises(ConfigError, match=r"train\.strategy: invalid value 'surgery'"):
        train(cfg(8, 0, strategy="surgery"), run_dir=tmp_path / "r", log=False)


def test_cross_modal_alignment_runs_and_reports_retrieval(tmp_path):
    align_cfg = {
        "seed": 0,
        "data": {"name": "synthetic", "n": 64},
        "align": {
            "encoders": {
                "audio": {"name": "audio_spec_cnn", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 16, "channels": [4], "out_dim": 8},
                "visual": {"name": "visual_cnn", "in_channels": 1, "channels": [4], "out_dim": 8},
            },
            "loss": {"name": "info_nce"},
        },
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
    }
    summary = train(align_cfg, run_dir=tmp_path / "align", log=False)
    final = summary["test"]
    for key in ("audio->visual R@1", "audio->visual R@5", "visual->audio R@1", "audio->visual median rank", "zero_shot_audio_accuracy", "temperature"):
        assert key in final
    assert 0 <= final["audio->visual R@1"] <= final["audio->visual R@5"] <= 1
    assert (tmp_path / "align" / "metrics.json").is_file() and (tmp_path / "align" / "checkpoints" / "last").is_file()
    from fusionzoo.cli import main

    assert main(["eval", str(tmp_path / "align")]) == 2  # an alignment run has no classifier to evaluate
    # From alignment to classification: the aligned encoders initialise a classifier.
    classifier = {
        "seed": 0, "data": {"name": "synthetic", "n": 64, "labels_per_class": 2},
        "model": {"encoders": align_cfg["align"]["encoders"], "fusion": {"name": "concat_mlp", "out_dim": 8}, "head": {"name": "linear", "out_dim": 8}},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.01, "strategy": "linear_probe", "init_from": {"path": str(tmp_path / "align"), "include": ["encoders.*"]}},
    }
    train(classifier, run_dir=tmp_path / "from_align", log=False)
    aligned, probe = weights(tmp_path / "align"), weights(tmp_path / "from_align")
    encoder_keys = [k for k in aligned if k.startswith("encoders.")]
    assert encoder_keys and all(torch.equal(aligned[k], probe[k]) for k in encoder_keys)  # loaded, then kept frozen
    assert f"loaded      {len(aligned):5d}" in (tmp_path / "from_align" / "init_report.txt").read_text()  # every aligned tensor
    bad = dict(align_cfg, model={})
    with pytest.raises(ConfigError, match="either a model"):
        train(bad, run_dir=tmp_path / "bad", log=False)


def test_cross_modal_distillation_and_unlabelled_samples(tmp_path):
    import json

    teacher_cfg = cfg(8, 0)
    teacher_cfg["data"].pop("labels_per_class")
    teacher_cfg["model"]["encoders"].pop("text")
    train(teacher_cfg, run_dir=tmp_path / "teacher", log=False)
    student = cfg(8, 0, distill={"teacher": str(tmp_path / "teacher"), "temperature": 2.0, "alpha": 0.8})
    student["data"].pop("labels_per_class")
    student["data"]["labelled_per_class"] = 1
    student["model"]["encoders"] = {"audio": {"name": "audio_spec_cnn", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 16, "channels": [4], "out_dim": 8}}
    summary = train(student, run_dir=tmp_path / "student", log=False)
    log = [json.loads(line) for line in (tmp_path / "student" / "log.jsonl").read_text().splitlines()]
    assert {"soft_loss", "hard_loss"} <= set(log[-1]["train"]) and summary["test"]["n"] == 96
    bad = dict(student, train={**student["train"], "distill": {"temperature": 2.0}})
    with pytest.raises(ConfigError, match=r"train\.distill\.teacher: required"):
        train(bad, run_dir=tmp_path / "bad", log=False)
    # beta > 0: the student's fused features also regress the teacher's through a learned projection
    features = dict(student, train={**student["train"], "distill": {**student["train"]["distill"], "beta": 0.5}})
    train(features, run_dir=tmp_path / "features", log=False)
    log = [json.loads(line) for line in (tmp_path / "features" / "log.jsonl").read_text().splitlines()]
    assert 0 < log[-1]["train"]["feature_loss"] < log[0]["train"]["feature_loss"]  # the regression is learned
    state = torch.load(latest_checkpoint(tmp_path / "features") / "state.pt", weights_only=True)
    assert any("distill.proj.weight" in k for k in state["objective"])  # the projection is trained and saved


@pytest.mark.parametrize("weighting", ["uncertainty", "fixed", "dwa"])
def test_multitask_aux_heads_log_their_weights_and_resume(tmp_path, weighting):
    import json
    import shutil

    opts = {"aux_heads": {"weighting": weighting}, "epochs": 2}
    train(cfg(8, 0, **opts), run_dir=tmp_path / "full", log=False)
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    weights = log[-1]["train"]["task_weights"]
    assert set(weights) == {"fused", "text", "visual"}
    if weighting == "uncertainty":
        assert weights != {"fused": 1.0, "text": 1.0, "visual": 1.0}  # learned
    part = tmp_path / "part"
    train(cfg(8, 0, **opts), run_dir=part, log=False)
    (part / "checkpoints" / "last").write_text("epoch-001\n")
    shutil.rmtree(part / "checkpoints" / "epoch-002")
    train(cfg(8, 0, **opts), run_dir=part, resume=True, log=False)
    a, b = weights_of(tmp_path / "full"), weights_of(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(latest_checkpoint(part) / "state.pt", weights_only=True)
    assert {k.split(".")[0] for k in state["objective"]} == {"aux", "multitask"}
    assert "multitask._extra_state" in state["objective"]  # the DWA history travels with the checkpoint


def weights_of(run):
    return load_file(str(selected_checkpoint(run) / "model.safetensors"))


def test_feature_transfer_matches_a_linear_probe_of_the_same_run(tmp_path):
    """Features exported by `fusionzoo embed` train a linear model as good as a linear probe of the
    frozen encoders: the same function class on the same features."""
    from fusionzoo.cli import main
    from fusionzoo.data import FeatureDataset

    data = {"name": "synthetic", "n": 600, "val_n": 200, "test_n": 400, "num_classes": 8, "seed": 0}
    source = cfg(8, 0, epochs=6)
    source["data"] = {**data, "seed": 1}  # another draw of the same task
    train(source, run_dir=tmp_path / "source", log=False)
    probe = cfg(8, 0, strategy="linear_probe", init_from={"path": str(tmp_path / "source")}, epochs=8)
    probe["data"] = data
    probe["model"]["fusion"]["hidden_dims"] = []
    probe_summary = train(probe, run_dir=tmp_path / "probe", log=False)
    # The probe's encoders are the source's: export them on the probe's data splits.
    assert main(["embed", str(tmp_path / "probe"), "--out", str(tmp_path / "feats")]) == 0
    train_set = FeatureDataset(path=tmp_path / "feats", split="train")
    assert train_set.dims == {"text": 8, "visual": 8} and len(train_set) == 600 and train_set.source.endswith("probe")
    linear = {
        "seed": 0,
        "data": {"name": "features", "path": str(tmp_path / "feats")},
        "model": {
            "encoders": {m: {"name": "feature_mlp", "in_dim": 8, "out_dim": 8} for m in ("text", "visual")},
            "fusion": {"name": "concat_mlp", "out_dim": 16, "hidden_dims": []},
            "head": {"name": "linear", "out_dim": 8},
        },
        "train": {"epochs": 8, "batch_size": 16, "lr": 0.01},
    }
    feature_summary = train(linear, run_dir=tmp_path / "linear", log=False)
    a, b = probe_summary["test"]["accuracy"], feature_summary["test"]["accuracy"]
    assert a > 0.3 and abs(a - b) < 0.06, (a, b)  # chance 12.5%, Bayes 50% from these two; 400 test samples: +-5 points


def test_ensemble_of_separately_trained_unimodal_runs(tmp_path, capsys):
    """An image-only and a text-only run, trained on their own, combined afterwards: the ensemble
    sees both, falls back to the one that sees a sample, and fits its weights on validation."""
    from fusionzoo.cli import main
    from fusionzoo.training import ensemble_runs
    from fusionzoo.training.ensemble import combine_predictions

    data = {"name": "synthetic", "n": 400, "val_n": 200, "test_n": 200, "num_classes": 8, "seed": 0}
    runs = {}
    for m in ("visual", "text"):
        c = cfg(8, 0, epochs=4)
        c["data"] = data
        c["model"]["encoders"] = {m: c["model"]["encoders"][m]}
        runs[m] = tmp_path / m
        train(c, run_dir=runs[m], log=False)
    result = ensemble_runs([runs["visual"], runs["text"]], out=tmp_path / "ens")
    rows = {"+".join(r["modalities"]): r for r in result["test"]}
    both = rows["text+visual"]
    assert both["runs"][0] is not None and both["runs"][1] is not None
    assert both["accuracy"] > max(both["runs"]) - 0.02  # two attributes beat one (Bayes 50% vs 25-30%)
    assert rows["visual"]["runs"][1] is None and rows["visual"]["accuracy"] == rows["visual"]["runs"][0]  # the other falls out
    fitted = ensemble_runs([runs["visual"], runs["text"]], fit="val", out=tmp_path / "fit")
    assert abs(sum(fitted["weights"]) - 1) < 1e-9 and (tmp_path / "fit" / "ensemble.json").is_file()
    # per sample: a run that does not see the sample has no say
    a, b = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    out = combine_predictions([a, b], [torch.tensor([True]), torch.tensor([False])], [0.5, 0.5])
    torch.testing.assert_close(out.exp(), torch.softmax(a.double(), 1))
    assert main(["ensemble", str(runs["visual"]), str(runs["text"]), "--weights", "0.3,0.7", "--out", str(tmp_path / "cli")]) == 0
    assert "weights: 0.30, 0.70" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not both"):
        ensemble_runs([runs["visual"], runs["text"]], weights=[0.5, 0.5], fit="val")


@needs_avdigits
@pytest.mark.slow
def test_finetuning_a_torchvision_cnn_on_split_mnist_replaces_its_classifier(tmp_path):
    """The recipe of configs/experiments/mnist_{source,target}.yaml at a tiny size: a ResNet-18
    trained on digits 0-4, its classifier replaced, fine-tuned on digits 5-9 with SGD + momentum and
    the trunk at a tenth of the learning rate."""
    from fusionzoo.config import load_config

    small = {"root": str(AVDIGITS), "labels_per_class": 8, "val_per_class": 8}
    source = load_config(ROOT / "configs/experiments/mnist_source.yaml").to_dict()
    source["data"].update(small)
    source["train"].update(epochs=1, batch_size=8)
    train(source, run_dir=tmp_path / "source", log=False)
    target = load_config(ROOT / "configs/experiments/mnist_target.yaml").to_dict()
    target["data"].update(small)
    target["train"].update(epochs=2, batch_size=8, init_from={**target["train"]["init_from"], "path": str(tmp_path / "source")})
    summary = train(target, run_dir=tmp_path / "target", log=False)
    assert summary["test"]["n"] == 4861  # every test image of digits 5-9
    src, dst = weights(tmp_path / "source"), weights(tmp_path / "target")
    conv = "encoders.visual.trunk.conv1.weight"
    assert not torch.equal(src[conv], dst[conv]) and torch.allclose(src[conv], dst[conv], atol=0.05)  # fine-tuned, gently
    assert not torch.equal(src["head.fc.weight"], dst["head.fc.weight"])
    report = (tmp_path / "target" / "init_report.txt").read_text()
    classifier = [k for k in src if k.startswith(("fusion.", "head."))]
    assert f"by pattern  {len(classifier):5d}  fusion." in report and "missing         0" in report  # the classifier is not transferred


@needs_avdigits
def test_mnist_digits_are_relabelled_and_val_is_held_out_of_train():
    import numpy as np

    from fusionzoo.data import MNIST

    train_set = MNIST(root=AVDIGITS, split="train", digits=[7, 3], labels_per_class=5, val_per_class=20)
    val, test = MNIST(root=AVDIGITS, split="val", digits=[7, 3], val_per_class=20), MNIST(root=AVDIGITS, split="test", digits=[7, 3])
    assert len(train_set) == 10 and len(val) == 40 and sorted(set(train_set.labels.tolist())) == [0, 1]
    assert len(test) == 1028 + 1010  # every t10k 7 and 3
    full = MNIST(root=AVDIGITS, split="train", digits=[7, 3], val_per_class=20, normalize=False)
    assert not set(full.index.tolist()) & set(val.index.tolist()) and len(full) + len(val) == 6265 + 6131  # every 7 and 3
    assert np.isclose(full.images.max(), 1.0) and set(train_set.index.tolist()) <= set(full.index.tolist())
    with pytest.raises(ValueError, match="distinct digits"):
        MNIST(root=AVDIGITS, digits=[3, 3])
