"""The training engine: resume, config errors, evaluation under subsets, torchrun."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fusionzoo as fz
from fusionzoo.cli import main
from fusionzoo.config import ConfigError
from fusionzoo.training import TrainSettings, evaluate_run, train

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(**train):
    return {
        "name": "tiny",
        "seed": 0,
        "data": {"name": "synthetic", "n": 96},
        "model": {
            "encoders": {
                "visual": {"name": "visual_cnn", "in_channels": 1, "channels": [4], "out_dim": 8},
                "audio": {"name": "audio_spec_cnn", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 16, "channels": [4], "out_dim": 8},
                "text": {"name": "text_embedding", "vocab_size": 64, "embed_dim": 8, "out_dim": 8},
            },
            "fusion": {"name": "concat_mlp", "out_dim": 16, "hidden_dims": [16]},
            "head": {"name": "linear", "out_dim": 8},
        },
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.003, "modality_dropout": 0.3, **train},
    }


def weights(run_dir):
    return load_file(str(fz.training.latest_checkpoint(run_dir) / "model.safetensors"))


def test_resume_reaches_the_same_weights(tmp_path):
    full = train(tiny_cfg(), run_dir=tmp_path / "full", log=False)
    part = tmp_path / "part"
    train(tiny_cfg(), run_dir=part, log=False)
    # Interrupt after epoch 1: point `last` back at it and drop epoch 2.
    (part / "checkpoints" / "last").write_text("epoch-001\n")
    import shutil

    shutil.rmtree(part / "checkpoints" / "epoch-002")
    resumed = train(tiny_cfg(), run_dir=part, resume=True, log=False)
    a, b = weights(tmp_path / "full"), weights(part)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert resumed["weights_sha256"] == full["weights_sha256"]
    log = [json.loads(line) for line in (part / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]


def test_run_directory_contents(tmp_path):
    summary = train(tiny_cfg(epochs=1), run_dir=tmp_path / "run", log=False)
    run = tmp_path / "run"
    for name in ("config.yaml", "log.jsonl", "metrics.json", "curves.png", "checkpoints/last"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 96 and 0 <= metrics["test"]["macro_f1"] <= 1
    assert summary["weights_identical_across_ranks"] and summary["world_size"] == 1
    state = torch.load(fz.training.latest_checkpoint(run) / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and "optimizer" in state
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_cfg(epochs=1), run_dir=run, log=False)
    # --overwrite replaces the old run entirely (its later epochs must not outlive the new ones)
    train(tiny_cfg(epochs=3), run_dir=run, overwrite=True, log=False)
    train(tiny_cfg(epochs=1), run_dir=run, overwrite=True, log=False)
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch-*")) == ["epoch-001"]
    assert fz.training.latest_checkpoint(run).name == "epoch-001"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["train"].update(epocs=3), r"train\.epocs: unknown key; did you mean epochs\?"),
        (lambda c: c["train"].update(lr=-1), r"train\.lr: invalid value"),
        (lambda c: c["data"].update(split="train"), r"data\.split: derived by the builder"),
        (lambda c: c["model"]["head"].update(out_dim=5), r"model\.head\.out_dim: the data has 8 classes"),
        (lambda c: c["model"]["encoders"]["text"].update(vocab_size=10), r"vocab_size: 10 is smaller than the data's vocabulary"),
    ],
)
def test_bad_config_fails_before_training(tmp_path, edit, message):
    cfg = tiny_cfg()
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg, run_dir=tmp_path / "run", log=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_settings_defaults_are_valid():
    assert TrainSettings.from_dict({}).epochs == 10


def test_eval_every_subset_and_noise(tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(epochs=1), run_dir=run, log=False)
    result = evaluate_run(run, levels=(0.0, 1.0))
    assert [tuple(r["modalities"]) for r in result["subsets"]] == [
        ("audio", "text", "visual"), ("audio", "text"), ("audio", "visual"), ("text", "visual"), ("audio",), ("text",), ("visual",)
    ]
    assert set(result["robustness"]) == {"audio", "text", "visual"}
    assert (run / "eval" / "levels=0+1" / "results.json").is_file() and (run / "eval" / "levels=0+1" / "robustness.png").is_file()
    assert result["robustness"]["text"][0]["accuracy"] == result["subsets"][0]["accuracy"]
    partial = evaluate_run(run, missing=["audio"], noise={"visual": 0.5}, levels=(0.0,))
    assert [len(r["modalities"]) for r in partial["subsets"]] == [2, 1, 1]
    with pytest.raises(ValueError, match="unknown modality 'depth'"):
        evaluate_run(run, missing=["depth"])


def test_cli_train_and_eval(tmp_path, capsys):
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_cfg(epochs=1)))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--set", "train.batch_size=48"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "run"), "--levels", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "audio + text + visual" in out and "noise on" in out
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2  # exists: needs --resume / --overwrite
    assert main(["train", str(path), "--set", "train.epocs=1"]) == 2
    assert "train.epocs" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def align_cfg(epochs):
    return {
        "seed": 0,
        "data": {"name": "synthetic", "n": 96},
        "align": {"encoders": {"audio": tiny_cfg()["model"]["encoders"]["audio"], "visual": tiny_cfg()["model"]["encoders"]["visual"]}},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 0.003},
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classification", "alignment"])
def test_torchrun_two_processes_on_cpu(tmp_path, kind):
    import yaml

    path = tmp_path / "tiny.yaml"
    # the classification run logs to TensorBoard too: rank 0 alone writes its events
    path.write_text(yaml.safe_dump(tiny_cfg(epochs=3, loggers=["tensorboard"]) if kind == "classification" else align_cfg(3)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        "-m", "fusionzoo", "train", str(path), "--run-dir", str(tmp_path / "run"),
    ]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:  # show where the processes were
        raise AssertionError(f"torchrun timed out; output so far:\n{(e.stdout or b'')[-3000:]!r}\n{(e.stderr or b'')[-3000:]!r}") from None
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["weights_identical_across_ranks"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and log[-1]["train"]["loss"] < log[0]["train"]["loss"]
    if kind == "classification":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1
        events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
        events.Reload()
        assert len(events.Scalars("val/accuracy")) == 3


def test_loss_and_optimizer_are_chosen_by_name(tmp_path):
    cfg = tiny_cfg(epochs=1, loss={"name": "focal", "gamma": 1.0}, optimizer={"name": "sgd", "momentum": 0.9, "nesterov": True},
                   decay_norms_and_biases=False, lr=0.05)
    summary = train(cfg, run_dir=tmp_path / "run", log=False)
    assert summary["last_epoch"]["train"]["loss"] > 0
    state = torch.load(fz.training.latest_checkpoint(tmp_path / "run") / "state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in groups)  # SGD's state, not AdamW's
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.01]  # norms and biases are not decayed


@pytest.mark.parametrize(
    "train_section, message",
    [
        ({"optimizer": {"name": "adam_w"}}, r"train\.optimizer\.name: unknown optimizer 'adam_w'; did you mean 'adamw'"),
        ({"optimizer": {"name": "sgd", "lr": 0.1}}, r"train\.optimizer\.lr: derived by the builder"),
        ({"optimizer": {"name": "sgd", "momentun": 0.9}}, r"train\.optimizer\.momentun: unknown argument; did you mean momentum"),
        ({"loss": {"name": "info_nce"}}, r"train\.loss\.name: 'info_nce' is not a classification, multilabel or regression loss"),
        ({"loss": {"name": "focal", "gama": 2}}, r"train\.loss\.gama: unknown argument; did you mean gamma"),
        ({"label_smoothing": 0.1}, r"train\.label_smoothing: moved; write train\.loss: \{name: cross_entropy"),
    ],
)
def test_loss_and_optimizer_errors_name_the_key(train_section, message):
    cfg = tiny_cfg()
    cfg["train"].update(train_section)
    with pytest.raises(ConfigError, match=message):
        fz.load_config(cfg)


def test_ema_is_what_is_validated_and_saved_and_resumes_bitwise(tmp_path):
    """``train.ema``: training is unchanged (the trained weights in ``state.pt`` are the plain run's),
    the averaged weights are validated, checkpointed and tested, and a resume ends bitwise the same."""
    import shutil

    plain = train(tiny_cfg(), run_dir=tmp_path / "plain", log=False)
    full = train(tiny_cfg(ema=0.9), run_dir=tmp_path / "full", log=False)
    last = tmp_path / "full" / "checkpoints" / "epoch-002"
    state = torch.load(last / "state.pt", weights_only=True)
    averaged, trained = load_file(str(last / "model.safetensors")), state["trained_weights"]
    unaveraged = load_file(str(tmp_path / "plain" / "checkpoints" / "epoch-002" / "model.safetensors"))
    assert all(torch.equal(trained[k], unaveraged[k]) for k in unaveraged)  # the average does not change training
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged if averaged[k].is_floating_point())
    assert full["val"]["loss"] != plain["val"]["loss"] and int(state["ema_updates"]) == 6  # 96 / 32 x 2 epochs
    part = tmp_path / "part"
    train(tiny_cfg(ema=0.9), run_dir=part, log=False)
    (part / "checkpoints" / "last").write_text("epoch-001\n")
    shutil.rmtree(part / "checkpoints" / "epoch-002")
    assert train(tiny_cfg(ema=0.9), run_dir=part, resume=True, log=False)["weights_sha256"] == full["weights_sha256"]
    with pytest.raises(ConfigError, match=r"train\.ema: invalid value 1\.0"):
        train(tiny_cfg(ema=1.0), run_dir=tmp_path / "bad", log=False)
