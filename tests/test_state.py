"""One resumable state: a run resumed from any epoch's checkpoint ends bitwise-identical to the
uninterrupted run, for every objective (multi-task DWA, whose weights depend on the loss history,
and cross-modal alignment, whose loss has its own learned temperature)."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fusionzoo.cli import main
from fusionzoo.training import latest_checkpoint, train

AUDIO = {"name": "audio_spec_cnn", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 16, "channels": [4], "out_dim": 8}
VISUAL = {"name": "visual_cnn", "in_channels": 1, "channels": [4], "out_dim": 8}


def dwa_cfg():
    return {
        "seed": 0,
        "data": {"name": "synthetic", "n": 64},
        "model": {
            "encoders": {"visual": VISUAL, "text": {"name": "text_embedding", "vocab_size": 64, "embed_dim": 8, "out_dim": 8}},
            "fusion": {"name": "concat_mlp", "out_dim": 16, "hidden_dims": [16]},
            "head": {"name": "linear", "out_dim": 8},
        },
        "train": {"epochs": 5, "batch_size": 16, "lr": 0.01, "keep_checkpoints": 5, "aux_heads": {"weighting": "dwa"}},
    }


def align_cfg():
    return {
        "seed": 0,
        "data": {"name": "synthetic", "n": 64},
        "align": {"encoders": {"audio": AUDIO, "visual": VISUAL}, "loss": {"name": "info_nce"}},
        "train": {"epochs": 5, "batch_size": 16, "lr": 0.01, "keep_checkpoints": 5},
    }


def interrupted_copy(full, dst, epoch):
    """The run folder as a process killed right after writing epoch ``epoch``'s checkpoint leaves it."""
    shutil.copytree(full, dst)
    root = dst / "checkpoints"
    (root / "last").write_text(f"epoch-{epoch:03d}\n")
    for old in root.glob("epoch-*"):
        if int(old.name.split("-")[1]) > epoch:
            shutil.rmtree(old)
    (dst / "metrics.json").unlink()


def final_state(run):
    checkpoint = latest_checkpoint(run)
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    return load_file(str(checkpoint / "model.safetensors")), state


def strip_times(history):
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "samples_per_s")} for r in history]


def assert_same_run(a, b):
    (wa, sa), (wb, sb) = final_state(a), final_state(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sa["objective"].keys() == sb["objective"].keys()
    for k, v in sa["objective"].items():
        other = sb["objective"][k]
        assert (torch.equal(v, other) if isinstance(v, torch.Tensor) else all(torch.equal(v[j], other[j]) for j in v)), k
    assert strip_times(sa["history"]) == strip_times(sb["history"])
    log = [json.loads(line) for line in (b / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5]


@pytest.mark.slow
@pytest.mark.parametrize("make_cfg", [dwa_cfg, align_cfg], ids=["multitask-dwa", "alignment"])
def test_resume_after_epoch_1_and_3_is_bitwise_identical(tmp_path, make_cfg):
    full = tmp_path / "full"
    train(make_cfg(), run_dir=full, log=False)
    for epoch in (1, 3):
        part = tmp_path / f"part{epoch}"
        interrupted_copy(full, part, epoch)
        train(make_cfg(), run_dir=part, resume=True, log=False)
        assert_same_run(full, part)
    if make_cfg is dwa_cfg:  # DWA is active from epoch 3 on: its history must have been restored
        history = final_state(full)[1]["objective"]["multitask._extra_state"]["history"]
        assert history.shape == (5, 3)
        weights = [r["train"]["task_weights"] for r in final_state(full)[1]["history"]]
        assert weights[0] == {"fused": 1.0, "text": 1.0, "visual": 1.0} and weights[-1] != weights[0]


def test_cli_resumes_an_alignment_run(tmp_path, capsys):
    cfg = align_cfg()
    cfg["train"]["epochs"] = 2
    path = tmp_path / "align.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run), "--set", "train.epochs=1"]) == 0
    assert main(["train", str(path), "--run-dir", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "R@1" in out
    assert latest_checkpoint(run).name == "epoch-002"
    state = torch.load(latest_checkpoint(run) / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and "loss.logit_scale" in state["objective"]
