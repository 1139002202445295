"""Bad inputs and faults: each is a clear error naming the file or key, or the right result, never
a silent wrong one. (Run folders and checkpoints; the rest of the catalogue lands with its fixes.)"""

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fusionzoo.cli import main
from fusionzoo.config import ConfigError
from fusionzoo.errors import CheckpointError, RunFolderError
from fusionzoo.training import evaluate_run, load_run, train
from fusionzoo.training.checkpoint import resume_checkpoint, verify_checkpoint
from fusionzoo.training.runfolder import MARKER

from common import ROOT, config_file, mini_avdigits, needs_avdigits, subprocess_env, tiny_config, write_manifest


def cfg(epochs=2, **train_opts):
    return tiny_config(epochs, **train_opts)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("bad") / "run"
    train(cfg(3, select="last"), run_dir=run, log=False)
    return run


def _flip(path: Path, offset_from_end: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - offset_from_end, len(data) - offset_from_end + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- checkpoints


def test_checkpoints_carry_a_manifest_that_verifies(finished):
    checkpoint = finished / "checkpoints" / "epoch-003"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["epoch"] == 3 and set(manifest["sha256"]) == {"model.safetensors", "state.pt"}
    verify_checkpoint(checkpoint)


def test_corrupted_weights_are_refused_naming_the_file(finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _flip(run / "checkpoints" / "epoch-003" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"epoch-003/model.safetensors is corrupted"):
        load_run(run)
    with pytest.raises(CheckpointError, match="corrupted"):
        evaluate_run(run)
    assert main(["eval", str(run)]) == 2  # one line, exit 2


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg(3, keep_checkpoints=3), run_dir=full, log=False)
    train(cfg(3, keep_checkpoints=3), run_dir=part, log=False)
    _flip(part / "checkpoints" / "epoch-003" / "state.pt")
    (part / "metrics.json").unlink()
    found, skipped = resume_checkpoint(part)
    assert found.name == "epoch-002" and "epoch-003" in skipped[0]
    with pytest.warns(UserWarning, match="skipping .*epoch-003.*corrupted"):
        train(cfg(3, keep_checkpoints=3), run_dir=part, resume=True, log=False)
    a = torch.load(full / "checkpoints" / "epoch-003" / "state.pt", weights_only=True)
    b = torch.load(part / "checkpoints" / "epoch-003" / "state.pt", weights_only=True)
    assert a["history"][-1]["train"] == b["history"][-1]["train"]  # epoch 3 trained again, identically


def test_resume_without_the_last_pointer_uses_the_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(cfg(2, keep_checkpoints=5), run_dir=run, log=False)
    (run / "checkpoints" / "last").unlink()
    with pytest.warns(UserWarning, match="last is missing"):
        summary = train(cfg(3, keep_checkpoints=5), run_dir=run, resume=True, log=False)
    assert summary["epochs_run"] == 3
    assert [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_pruning_never_removes_a_newer_checkpoint(tmp_path):
    from fusionzoo.training.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    for epoch in (1, 2, 5):
        save_checkpoint(tmp_path, epoch, model, {"epoch": epoch}, keep=1)
    save_checkpoint(tmp_path, 3, model, {"epoch": 3}, keep=1)  # e.g. resumed from epoch 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*")) == ["epoch-003", "epoch-005"]


def test_a_failed_checkpoint_write_names_the_folder_and_leaves_nothing(tmp_path, monkeypatch):
    import fusionzoo.training.checkpoint as ck

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*epoch-001 \(No space left on device\); is the disk full"):
        ck.save_checkpoint(tmp_path, 1, torch.nn.Linear(2, 2), {})
    assert list((tmp_path / "checkpoints").iterdir()) == []


# ---------------------------------------------------------------- run folders


def test_a_folder_that_is_not_a_run_is_never_written(tmp_path):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own: file\n")
    with pytest.raises(RunFolderError, match="not empty and not a fusionzoo run folder"):
        train(cfg(1), run_dir=mine, overwrite=True, log=False)
    assert (mine / "config.yaml").read_text() == "my own: file\n" and sorted(p.name for p in mine.iterdir()) == ["config.yaml"]


def test_overwrite_validates_before_deleting(finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    bad = cfg(1)
    bad["model"]["fusion"]["name"] = "concat_mpl"
    with pytest.raises(ConfigError, match="concat_mpl"):
        train(bad, run_dir=run, overwrite=True, log=False)
    assert (run / "checkpoints" / "epoch-003").is_dir() and (run / "metrics.json").is_file()
    train(cfg(1), run_dir=run, overwrite=True, log=False)
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch-*")) == ["epoch-001"] and (run / MARKER).is_file()


def test_resume_with_a_changed_config_lists_the_differences(finished):
    changed = cfg(3, select="last", lr=0.3)
    with pytest.raises(ConfigError, match=r"--resume with a different config; train.lr: the run has 0.01, now 0.3"):
        train(changed, run_dir=finished, resume=True, log=False)
    longer = train(cfg(3, select="last", progress=False), run_dir=finished, resume=True, log=False)  # allowed
    assert longer["epochs_run"] == 3


@pytest.mark.slow
def test_two_processes_cannot_train_into_one_folder(tmp_path):
    path = config_file(tmp_path, cfg(40, n=512))
    run = tmp_path / "run"
    env = subprocess_env()
    first = subprocess.Popen([sys.executable, "-m", "fusionzoo", "train", str(path), "--run-dir", str(run)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run / "log.jsonl").exists() and time.time() < deadline:  # the first holds the lock by now
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-m", "fusionzoo", "train", str(path), "--run-dir", str(run), "--resume"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert f"is in use by another fusionzoo process (PID {first.pid})" in second.stderr
        assert second.stderr.count("\n") == 1  # one line
    finally:
        first.kill()
        first.wait()
    # the kernel released the dead process's lock: the run resumes
    assert main(["train", str(path), "--run-dir", str(run), "--resume", "--set", "train.epochs=40"]) == 0


# ---------------------------------------------------------------- training and data


def test_a_modality_the_data_does_not_have_is_a_config_error(tmp_path):
    bad = cfg(1)
    bad["model"]["encoders"]["vision"] = bad["model"]["encoders"].pop("visual")
    with pytest.raises(ConfigError, match=r"model.encoders.vision: the data has no modality 'vision': it has \['audio', 'text', 'visual'\]"):
        train(bad, run_dir=tmp_path / "run", log=False)
    assert not (tmp_path / "run").exists()


def _poison(monkeypatch, every: int):
    """Make every ``every``-th training batch's images NaN (the first one included)."""
    from fusionzoo.training import engine

    original, calls = engine.move_batch, {"n": 0}

    def poisoned(batch, device):
        batch = original(batch, device)
        if batch["visual"].shape[0] == 16:  # training batches only (evaluation batches are larger)
            calls["n"] += 1
            if calls["n"] % every == 1:
                batch["visual"] = torch.full_like(batch["visual"], float("nan"))
        return batch

    monkeypatch.setattr(engine, "move_batch", poisoned)


def test_a_non_finite_loss_stops_the_run_naming_epoch_and_step(tmp_path, monkeypatch, capsys):
    from fusionzoo.errors import TrainingDiverged

    _poison(monkeypatch, every=10**6)  # only the very first batch
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 1: the training loss is not finite; .*last finite checkpoint: none"):
        train(cfg(2), run_dir=tmp_path / "run", log=False)
    assert not list((tmp_path / "run" / "checkpoints").glob("epoch-*")) and not (tmp_path / "run" / "metrics.json").exists()


def test_skip_batch_skips_non_finite_batches_and_keeps_batchnorm_clean(tmp_path, monkeypatch):
    _poison(monkeypatch, every=2)  # batches 1 and 3 of each epoch's 3
    summary = train(cfg(2, on_nonfinite="skip_batch"), run_dir=tmp_path / "run", log=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_batches"] for r in log] == [2, 1]  # calls 1, 3 in epoch 1; call 5 in epoch 2
    model, _, _ = load_run(tmp_path / "run")
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
    assert summary["test"] is not None and math.isfinite(summary["test"]["loss"])


# ---------------------------------------------------------------- evaluation and config files


def test_eval_conditions_hold_in_the_curves_and_each_has_its_folder(finished):
    plain = evaluate_run(finished, levels=(0.0, 1.0))
    cond = evaluate_run(finished, missing=["text"], noise={"visual": 0.5}, levels=(0.0, 1.0))
    assert set(cond["robustness"]) == {"visual"}  # no curve for the removed modality
    assert cond["robustness"]["visual"][0]["accuracy"] == cond["subsets"][0]["accuracy"]  # level 0 = the condition itself
    assert (finished / "eval" / "levels=0+1" / "results.json").is_file()  # levels other than the default: their own condition
    again = json.loads((finished / "eval" / "levels=0+1,missing=text,noise=visual:0.5" / "results.json").read_text())
    assert again["missing"] == ["text"] and json.loads((finished / "eval" / "levels=0+1" / "results.json").read_text()) == plain


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("train: {epochs: 2\nmodel: 3\n", [], r"not valid YAML: expected ',' or '}', but got ':' at line 2, column 6"),
        (None, ["train.lr=[1"], r"override 'train.lr=\[1': the value is not valid YAML"),
        (None, ["train.amp=maybe"], r"train.amp: expected true or false, got 'maybe'"),
        (None, ["train.epochs=ten"], r"train.epochs: expected an int, got 'ten'"),
        (None, ["train.weight_decay=lots"], r"train.weight_decay: expected a number, got 'lots'"),
    ],
)
def test_config_file_errors_are_one_line_naming_file_and_key(tmp_path, capsys, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(cfg(1)))
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run"), *sets]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_scientific_notation_is_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg(1)).replace("lr: 0.01", "lr: 1e-2"))
    from fusionzoo.config import load_config

    assert load_config(path).train.lr == 0.01


# ---------------------------------------------------------------- encoders


@pytest.mark.parametrize("bad", [[0, 4000], [4000, 4001], [-3, 100], [383, 4000]])
def test_audio_lengths_out_of_range_are_refused(bad):
    import fusionzoo as fz

    enc = fz.ENCODERS.get("audio_spec_cnn").example().eval()
    with pytest.raises(ValueError, match=r"audio: lengths must be in \[384, 4000\] \(samples: AudioSpecCNN's minimum to the padded length\)"):
        enc(torch.randn(2, 4000), torch.tensor(bad))


@pytest.mark.parametrize("name, need", [("audio_spec_cnn", 256 + 128 * 1), ("audio_resnet18", 256 + 64 * 15)])
def test_a_clip_too_short_for_the_network_names_the_minimum(name, need):
    import fusionzoo as fz

    enc = fz.ENCODERS.get(name).example().eval()
    with pytest.raises(ValueError, match=rf"audio: \w+ needs at least {need} samples per clip, got {need - 1}"):
        enc(torch.randn(2, need - 1))
    assert enc(torch.randn(2, need)).shape == (2, enc.out_dim)


def test_torchvision_weights_are_downloaded_without_unpickling(monkeypatch):
    import torchvision.models._api as api

    import fusionzoo as fz

    seen = {}

    def fake_load(url, *args, **kwargs):
        seen.update(kwargs, url=url)
        raise RuntimeError("offline in this test")

    monkeypatch.setattr(api, "load_state_dict_from_url", fake_load)
    with pytest.raises(RuntimeError, match="offline"):
        fz.create_encoder("resnet18", weights="IMAGENET1K_V1")
    assert seen["weights_only"] is True and seen["check_hash"] is True and seen["url"].endswith(".pth")


@pytest.mark.parametrize("name, content", [("w.pt", os.urandom(300)), ("w.pt", b""), ("w.safetensors", os.urandom(300))])
def test_init_from_a_file_that_is_not_weights_is_one_line(tmp_path, capsys, name, content):
    (tmp_path / name).write_bytes(content)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg(1, init_from={"path": str(tmp_path / name)})))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"train.init_from: {tmp_path / name}: not a" in err


def test_init_from_that_loads_nothing_is_an_error_unless_allowed(tmp_path):
    from safetensors.torch import save_file

    save_file({"unrelated.weight": torch.ones(3)}, str(tmp_path / "w.safetensors"))
    init = {"path": str(tmp_path / "w.safetensors")}
    with pytest.raises(ConfigError, match=r"train.init_from: no tensor of .*w.safetensors matches the model"):
        train(cfg(1, init_from=init), run_dir=tmp_path / "a", log=False)
    train(cfg(1, init_from={**init, "allow_empty": True}), run_dir=tmp_path / "b", log=False)


def test_text_ids_outside_the_vocabulary_and_empty_text():
    import fusionzoo as fz

    for name in ("text_embedding", "text_lstm", "text_transformer"):
        enc = fz.ENCODERS.get(name).example().eval()
        with pytest.raises(ValueError, match=r"text: token ids must be in \[0, 100\) \(vocab_size\), got values from -1 to 5"):
            enc(torch.tensor([[5, -1]]))
        assert enc(torch.zeros(2, 0, dtype=torch.long)).abs().sum() == 0  # no tokens: the empty output


# ---------------------------------------------------------------- data files

@needs_avdigits
def test_a_manifest_digit_out_of_range_names_the_row(tmp_path):
    import fusionzoo as fz

    root, rows = mini_avdigits(tmp_path, n=4)
    rows[1]["digit"] = "10"
    write_manifest(root, rows)
    with pytest.raises(ValueError, match=rf"manifest.csv: row of {rows[1]['audio_path']}: digit must be 0-9, got '10'"):
        fz.create_dataset("avdigits", root=str(root), split="test")


def test_a_malformed_checksums_line_names_the_line(tmp_path):
    from fusionzoo.data.avdigits import verify_checksums

    import hashlib

    (tmp_path / "checksums.sha256").write_text(hashlib.sha256(b"").hexdigest() + "  a.txt\nnot-a-hash b.txt\n")
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(ValueError, match=r"checksums.sha256: line 2: expected '<64 hex digits>  <file>'"):
        verify_checksums(tmp_path)


def test_a_corrupted_gzip_names_the_file(tmp_path):
    import gzip

    from fusionzoo.data.avdigits import read_idx

    data = bytearray(gzip.compress(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x10" + bytes(range(16))))
    data[12:20] = b"\xff" * 8
    (tmp_path / "x.gz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"x.gz is not a valid gzip-compressed MNIST idx file"):
        read_idx(tmp_path / "x.gz")


def test_an_offline_download_is_one_clear_error(monkeypatch):
    import urllib.error
    import urllib.request

    from fusionzoo.data.avdigits import _fetch

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match=r"could not download https://\S+ \(Temporary failure in name resolution\)"):
        _fetch("https://example.org/x.gz")


# ---------------------------------------------------------------- fault injection

KILL_IN_CHECKPOINT = """
import os, signal, sys
import fusionzoo.training.checkpoint as ck
original = ck.save_file
def dying(*args, **kwargs):  # write the weights into the temporary folder, then die before the rename
    original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
ck.save_file = dying
from fusionzoo.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_killed_anywhere_then_resumed_ends_bitwise_identical(tmp_path):
    import random

    from safetensors.torch import load_file

    path = config_file(tmp_path, cfg(4, n=256))
    env = subprocess_env()
    train_cmd = [sys.executable, "-m", "fusionzoo", "train", str(path)]
    reference = tmp_path / "reference"
    subprocess.run([*train_cmd, "--run-dir", str(reference)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    run = tmp_path / "run"
    # killed while writing its first checkpoint: nothing half-written may block the resume
    subprocess.run([sys.executable, "-c", KILL_IN_CHECKPOINT, "train", str(path), "--run-dir", str(run), "--resume"],
                   cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert not list((run / "checkpoints").glob("epoch-*"))
    rng = random.Random(0)
    for _ in range(4):  # killed at random moments
        proc = subprocess.Popen([*train_cmd, "--run-dir", str(run), "--resume"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 6.0))
        proc.kill()
        proc.wait()
    done = subprocess.run([*train_cmd, "--run-dir", str(run), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a = load_file(str(reference / "checkpoints" / "epoch-004" / "model.safetensors"))
    b = load_file(str(run / "checkpoints" / "epoch-004" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "nothing.yaml"], "config file not found: nothing.yaml"),
        (["info", "configs/experiments/quickstart.yaml", "--batch-size", "0"], "--batch-size: expected an int >= 1, got 0"),
        (["eval", "no/such/run"], "no/such/run is neither a run directory with checkpoints nor a checkpoint folder"),
    ],
)
def test_cli_user_errors_are_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", __import__("fusionzoo").list_fusions())
def test_a_feature_dtype_other_than_the_blocks_is_named(name, dtype):
    import fusionzoo as fz

    block = fz.FUSIONS.get(name).example().eval()
    feats = block.example_input(2)
    m = sorted(feats)[0]
    feats[m] = feats[m].to(dtype)
    with pytest.raises(TypeError, match=rf"features\['{m}'\] is {str(dtype).removeprefix('torch.')}, the block's parameters are float32"):
        block(feats)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts per op: allowed
        if dtype == torch.bfloat16:
            assert block(feats).shape == (2, block.out_dim)


def test_the_dtype_check_follows_converted_and_replaced_parameters():
    """The block caches the path of its first parameter, not the parameter: after ``.double()``,
    a replaced parameter or a replaced submodule, the check reads the parameter in place now."""
    import fusionzoo as fz

    block = fz.create_fusion("concat_mlp", in_dims={"audio": 3, "text": 4}, out_dim=2, hidden_dims=(), norm=False)
    feats = {"audio": torch.randn(2, 3), "text": torch.randn(2, 4)}
    assert block(feats).dtype == torch.float32  # caches the path
    assert block._first_parameter() is block.missing["audio"]
    block.double()
    with pytest.raises(TypeError, match="parameters are float64"):
        block(feats)
    block.float()
    block.missing["audio"] = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))  # the parameter replaced
    with pytest.raises(TypeError, match="parameters are float16"):
        block(feats)
    block.missing = torch.nn.ParameterDict({m: torch.zeros(d, dtype=torch.float64) for m, d in block.in_dims.items()})
    with pytest.raises(TypeError, match="parameters are float64"):  # the submodule holding it replaced
        block(feats)
    block.mlp.double()
    assert block({m: x.double() for m, x in feats.items()}).dtype == torch.float64


def test_a_permission_error_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    """Root ignores file modes, so the refusal is injected where the run folder is first written."""
    from fusionzoo.training import runfolder

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(runfolder.Path, "mkdir", denied)
    path = config_file(tmp_path, cfg(1))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "locked" / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err and "locked" in err


# ---------------------------------------------------------------- degenerate validation and training splits


def _manifest_run(tmp_path, label, blank=(), tags=None, out_dim=4, epochs=1):
    """A small manifest run (visual + text) whose ``blank`` splits have empty label cells."""
    from common import CLASSES, build_folder, data_section, write_rows

    root, rows = build_folder(tmp_path)
    for r in rows:
        if tags is not None:
            r["tags"] = tags(r)
        if r["split"] in blank:
            r[label["column"]] = ""
    write_rows(root / "items.csv", rows)
    modalities = {m: spec for m, spec in data_section(root)["modalities"].items() if m in ("visual", "text")}
    return {
        "seed": 0,
        "data": data_section(root, modalities=modalities, label=label),
        "model": {
            "encoders": {"visual": {"name": "visual_cnn", "in_channels": 1, "channels": [4], "out_dim": 8},
                         "text": {"name": "text_embedding", "vocab_size": 32, "embed_dim": 8, "out_dim": 8}},
            "fusion": {"name": "concat_mlp", "out_dim": 8},
            "head": {"name": "linear", "out_dim": len(CLASSES) if out_dim is None else out_dim},
        },
        "train": {"epochs": epochs, "batch_size": 8, "lr": 0.01},
    }


@pytest.mark.parametrize("case", ["multiclass", "regression", "multilabel"])
def test_a_validation_split_that_defines_no_metric_is_refused_not_selected_on(tmp_path, case):
    """No labelled validation sample (multi-class, regression) or no positive label (multi-label):
    the selection metric is undefined; before, "val accuracy 0.000" was invented and epoch 1 kept."""
    from common import CLASSES

    if case == "multiclass":
        config = _manifest_run(tmp_path, {"column": "label", "allow_unlabelled": True}, blank=("val",), out_dim=None)
        want = r"the val split gives no accuracy \(it has no labelled sample\)"
    elif case == "regression":
        config = _manifest_run(tmp_path, {"column": "score", "task": "regression", "allow_unlabelled": True}, blank=("val",), out_dim=1)
        want = r"the val split gives no mae \(it has no labelled sample\)"
    else:
        config = _manifest_run(tmp_path, {"column": "tags", "task": "multilabel"}, out_dim=len(CLASSES),
                               tags=lambda r: "" if r["split"] == "val" else r["label"])
        want = r"the val split gives no mAP \(mAP and micro-F1 need a positive label; it has none\)"
    with pytest.raises(ValueError, match=want):
        train(config, run_dir=tmp_path / "run", log=False)
    assert not (tmp_path / "run" / "metrics.json").exists() and not list((tmp_path / "run").glob("checkpoints/epoch-*"))
    assert main(["train", str(config_file(tmp_path, config)), "--run-dir", str(tmp_path / "cli")]) == 2


def test_all_unlabelled_training_data_is_refused_after_its_first_epoch(tmp_path):
    from common import CLASSES

    config = _manifest_run(tmp_path, {"column": "label", "allow_unlabelled": True, "classes": list(CLASSES)}, blank=("train",), out_dim=len(CLASSES))
    with pytest.raises(ValueError, match=r"epoch 1: no training sample has a label .*this epoch was not saved"):
        train(config, run_dir=tmp_path / "run", log=False)


def test_metrics_json_is_strict_json_with_null_for_an_undefined_metric(tmp_path):
    from common import CLASSES

    config = _manifest_run(tmp_path, {"column": "label", "allow_unlabelled": True}, blank=("test",), out_dim=len(CLASSES))
    summary = train(config, run_dir=tmp_path / "run", log=False)
    assert math.isnan(summary["test"]["accuracy"]) and summary["test"]["n"] == 0

    def refuse(name):
        raise AssertionError(f"bare {name} in strict JSON")

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["test"]["accuracy"] is None and metrics["test"]["n"] == 0 and metrics["val"]["accuracy"] is not None
    for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)


# ---------------------------------------------------------------- ensembles of runs that disagree


def test_an_ensemble_aligns_runs_by_class_name_and_refuses_other_classes(tmp_path):
    """Run B numbers the classes in reverse (``label.classes``): each run is scored as it scores
    alone and the average is over the same classes (before: 5% for a run that scores 46% alone)."""
    from common import CLASSES

    from fusionzoo.training import ensemble_runs

    config = _manifest_run(tmp_path, {"column": "label"}, out_dim=len(CLASSES), epochs=3)
    train(config, run_dir=tmp_path / "a", log=False)
    reverse = json.loads(json.dumps(config))
    reverse["data"]["label"] = {"column": "label", "classes": list(reversed(CLASSES))}
    train(reverse, run_dir=tmp_path / "b", log=False)
    alone = [evaluate_run(tmp_path / r, levels=(0.0,), out_dir=tmp_path / f"eval-{r}")["subsets"][0]["accuracy"] for r in "ab"]
    result = ensemble_runs([tmp_path / "a", tmp_path / "b"], out=tmp_path / "ens")
    both = next(r for r in result["test"] if len(r["modalities"]) == 2)
    assert both["runs"] == pytest.approx(alone)
    flipped = ensemble_runs([tmp_path / "b", tmp_path / "a"], out=tmp_path / "ens2")
    assert next(r for r in flipped["test"] if len(r["modalities"]) == 2)["accuracy"] == pytest.approx(both["accuracy"])
    fewer = json.loads(json.dumps(config))
    fewer["data"]["label"] = {"column": "label", "classes": list(CLASSES) + ["zebra"]}
    fewer["model"]["head"]["out_dim"] = len(CLASSES) + 1
    train(fewer, run_dir=tmp_path / "c", log=False)
    with pytest.raises(ValueError, match=r"the runs predict different numbers of classes: \[3, 4\]"):
        ensemble_runs([tmp_path / "a", tmp_path / "c"], out=tmp_path / "ens3")
    from fusionzoo.training.ensemble import _ClassOrder

    with pytest.raises(ValueError, match=r"run-c predicts other classes than the first run \(its own: \['zebra'\], lacking: \['owl'\]\)"):
        _ClassOrder(["cat", "dog", "owl"], ["zebra", "dog", "cat"], "run-c")
    order = _ClassOrder(["cat", "dog", "owl"], ["owl", "cat", "dog"], "run-b")
    assert order.columns.tolist() == [1, 2, 0] and order.inverse.tolist() == [2, 0, 1]
    for weights in ("nan,1", "inf,1", "-1,2"):
        assert main(["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), f"--weights={weights}", "--out", str(tmp_path / "w")]) == 2


# ---------------------------------------------------------------- options checked where they are read


def test_an_audio_rate_other_than_the_encoder_s_is_refused(tmp_path):
    """Before: data at 16000 Hz and the encoder's filterbank at 8000 trained at the wrong rate."""
    from common import MODALITIES, build_folder, data_section

    root, _ = build_folder(tmp_path)
    config = {
        "data": data_section(root, modalities={"audio": {**MODALITIES["audio"], "sample_rate": 16000}}),
        "model": {"encoders": {"audio": {"name": "audio_spec_cnn", "sample_rate": 8000, "n_fft": 128, "hop_length": 64, "n_mels": 16,
                                         "channels": [4], "out_dim": 8}},
                  "fusion": {"name": "concat_mlp", "out_dim": 8}, "head": {"name": "linear", "out_dim": 3}},
        "train": {"epochs": 1},
    }
    with pytest.raises(ConfigError, match=r"model\.encoders\.audio\.sample_rate: 8000 Hz, but the data gives 'audio' at 16000 Hz"):
        train(config, run_dir=tmp_path / "run", log=False)


@pytest.mark.parametrize("options,want", [
    ({"kind": "text", "max_tokens": -2}, r"modalities\.m\.max_tokens: an int >= 1 or null, got -2"),
    ({"kind": "text", "max_tokens": 0}, r"modalities\.m\.max_tokens: an int >= 1 or null, got 0"),
    ({"kind": "text", "min_freq": 1.5}, r"modalities\.m\.min_freq: an int >= 1, got 1\.5"),
    ({"kind": "text", "lower": "yes"}, r"modalities\.m\.lower: true or false"),
    ({"kind": "image", "size": 8, "augment": {"crop": {"scal": [0.5, 1]}}}, r"modalities\.m\.augment\.crop: unknown option 'scal' \(allowed: scale\)"),
    ({"kind": "image", "size": 8, "augment": {"crop": {"scale": [0.5, 2]}}}, r"augment\.crop\.scale: \[min, max\] with 0 < min <= max <= 1"),
    ({"kind": "image", "augment": {"flip": 1.5}}, r"modalities\.m\.augment\.flip: a probability in \[0, 1\], got 1\.5"),
    ({"kind": "image", "augment": {"rotate": -10}}, r"modalities\.m\.augment\.rotate: degrees in \[0, 180\]"),
    ({"kind": "image", "augment": {"color_jitter": {"brigthness": 0.2}}}, r"augment\.color_jitter: unknown option 'brigthness'"),
    ({"kind": "image", "max_pixels": 0}, r"modalities\.m\.max_pixels: an int >= 1 or null"),
    ({"kind": "audio", "sample_rate": 8000, "augment": {"crop": "yes"}}, r"modalities\.m\.augment\.crop: true or false"),
    ({"kind": "audio", "sample_rate": 8000, "augment": {"gain_db": float("nan")}}, r"modalities\.m\.augment\.gain_db: a gain range in dB"),
])
def test_nested_and_numeric_options_are_checked_where_they_are_read(tmp_path, options, want):
    from fusionzoo.data.manifest import ManifestDataset

    (tmp_path / "m.csv").write_text("x,label\na,cat\n")
    with pytest.raises(ValueError, match=want):
        ManifestDataset(path=tmp_path / "m.csv", modalities={"m": {"column": "x", **options}}, label={"column": "label"})


# ---------------------------------------------------------------- small files, huge memory


def _png_header(width, height):
    """A PNG signature and an IHDR chunk declaring ``width x height``, then junk: never decodable."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    """Before: a 875 KB PNG declaring 30000 x 30000 decoded to 5 GB. The header is compared with
    ``max_pixels`` first; the decoder is never called (checked), so nothing is allocated."""
    from common import write_rows

    import fusionzoo.data.decode as decode
    from fusionzoo.data.manifest import ManifestDataset

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "bomb.png").write_bytes(_png_header(30000, 30000))
    write_rows(tmp_path / "m.csv", [{"image": "img/bomb.png", "label": "cat", "split": "train"}])
    called = []
    monkeypatch.setattr("torchvision.io.decode_image", lambda *a, **k: called.append(1))
    with pytest.raises(ValueError, match=r"m\.csv: line 2: column .image.: image .*img/bomb\.png declares 30000 x 30000 pixels \(900,000,000\), more than "
                                         r"modalities\.visual\.max_pixels \(89,478,485\)"):
        ManifestDataset(path=tmp_path / "m.csv", modalities={"visual": {"column": "image", "kind": "image"}}, label={"column": "label"})
    reader = decode.ImageReader(max_pixels=None)
    reader.check(tmp_path / "img" / "bomb.png")  # no limit: the header passes (the decoder would then say what is wrong)
    assert not called


@pytest.mark.parametrize("fmt", ["png", "jpeg", "gif", "webp", "webp_lossless", "progressive_jpeg"])
def test_image_headers_give_the_decoded_size(tmp_path, fmt):
    from PIL import Image

    from fusionzoo.data.image_header import image_size

    image = Image.new("RGB", (37, 23), (10, 200, 30))
    path = tmp_path / f"x.{fmt}"
    kind = {"progressive_jpeg": "jpeg", "webp_lossless": "webp"}.get(fmt, fmt)
    extra = {"progressive": True, "exif": b"Exif\x00\x00" + b"\x00" * 3000} if fmt == "progressive_jpeg" else {"lossless": True} if fmt == "webp_lossless" else {}
    image.save(path, format=kind.upper(), **extra)
    assert image_size(path) == (37, 23)
    (tmp_path / "junk").write_bytes(b"\xff\xd8\x00\x00junk")
    assert image_size(tmp_path / "junk") is None


def test_a_long_clip_without_max_seconds_is_refused_at_the_start_check(tmp_path, monkeypatch):
    """Before: a 30-minute clip padded its batch to 14 M samples per clip and ended in an allocator
    traceback. The start check reads the frame count from the header; here the limit is lowered
    instead of writing a long file."""
    from common import write_rows, write_wav
    import numpy as np

    from fusionzoo.data.decode import AudioReader
    from fusionzoo.data.manifest import ManifestDataset

    write_wav(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32), 8000)
    write_rows(tmp_path / "m.csv", [{"audio": "a.wav", "label": "cat", "split": "train"}])
    monkeypatch.setattr(AudioReader, "LONG_SECONDS", 0.5)
    spec = {"column": "audio", "kind": "audio", "sample_rate": 8000}
    with pytest.raises(ValueError, match=r"line 2.*a\.wav lasts 1 s and modalities\.audio\.max_seconds is not set: its batch would be padded to 8,000"):
        ManifestDataset(path=tmp_path / "m.csv", modalities={"audio": spec}, label={"column": "label"})
    ManifestDataset(path=tmp_path / "m.csv", modalities={"audio": {**spec, "max_seconds": 0.5}}, label={"column": "label"})


# ---------------------------------------------------------------- eval options


def test_eval_refuses_bad_levels_noise_and_missing_and_other_levels_have_their_own_folder(finished, capsys):
    for args, want in ((["--levels", "nan"], "--levels: distinct finite noise levels >= 0"), (["--levels=-1,0"], "--levels: distinct finite"),
                       (["--levels", "abc"], "--levels: 'abc' is not a number"), (["--noise", "visual=abc"], "--noise visual=abc: 'abc' is not a number"),
                       (["--noise", "visual=-1"], "--noise visual=-1.0: a noise level is a finite number >= 0"),
                       (["--missing", "visual,text"], "--missing names every modality of the model")):
        assert main(["eval", str(finished), *args]) == 2, args
        assert want in capsys.readouterr().err, args
    assert main(["eval", str(finished)]) == 0
    before = (finished / "eval" / "results.json").read_bytes()
    assert main(["eval", str(finished), "--levels", "0,1"]) == 0
    assert json.loads((finished / "eval" / "levels=0+1" / "results.json").read_text())["robustness"]["visual"][1]["level"] == 1.0
    assert (finished / "eval" / "results.json").read_bytes() == before  # what compare reads is not overwritten by other levels


# ---------------------------------------------------------------- writers write only what they own


def test_a_saved_folder_is_replaced_whole_and_a_foreign_folder_is_refused(finished, tmp_path):
    """Before: ``save_run(run, run)`` replaced the run's own config, and a re-save into a saved folder
    left the old card and label list behind (the folder then evaluated at 5%)."""
    import fusionzoo as fz

    with pytest.raises(ValueError, match=r"save_run: .* is the run folder .*a saved model goes into a folder of its own"):
        fz.hub.save_run(finished, finished)
    with pytest.raises(ValueError, match="is the run folder"):
        fz.hub.save_run(finished, finished / "saved")  # inside the run: refused too
    saved = fz.hub.save_run(finished, tmp_path / "saved")
    assert {"card.json", "config.yaml", "model.safetensors", "README.md"} <= {p.name for p in saved.iterdir()}
    model = fz.from_pretrained(saved)
    model.save_pretrained(saved)  # a plain re-save: the card and data state of the earlier one are gone, not stale
    assert {p.name for p in saved.iterdir()} == {"config.yaml", "model.safetensors", "README.md"}
    assert not list(tmp_path.glob(".saved.*"))  # no temporary folder left beside it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    with pytest.raises(FileExistsError, match=r"mine holds files a saved model does not write \(notes\.txt\)"):
        model.save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "my notes"
    with pytest.raises(FileExistsError, match=r"holds files a saved model does not write \(\.fusionzoo-run, \.lock, checkpoints, \.\.\.\)"):
        model.save_pretrained(finished)
    model.save_pretrained(tmp_path / "mine", overwrite=True)  # told to: replaced
    assert not (tmp_path / "mine" / "notes.txt").exists()


def test_compare_does_not_overwrite_a_leaderboard_it_did_not_write(finished, tmp_path, capsys):
    root = tmp_path / "grid"
    (root / "cells" / "a").mkdir(parents=True)
    import shutil

    shutil.copytree(finished, root / "cells" / "a" / "seed-0")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "leaderboard.md").write_text("my own leaderboard")
    assert main(["compare", "--collect", str(root), "--out", str(tmp_path / "report")]) == 2
    assert "leaderboard.md, which compare did not write: give another --out" in capsys.readouterr().err
    assert (tmp_path / "report" / "leaderboard.md").read_text() == "my own leaderboard"
    assert main(["compare", "--collect", str(root)]) == 0  # its own folder: written, then rewritten
    assert main(["compare", "--collect", str(root)]) == 0
    assert json.loads((root / "leaderboard.json").read_text())["written_by"] == "fusionzoo compare"
    capsys.readouterr()
    assert main(["compare", str(config_file(tmp_path, cfg(1))), "--jobs", "0", "--out", str(tmp_path / "jobs")]) == 2
    assert "--jobs: runs (or tune workers) at a time, an int >= 1, got 0" in capsys.readouterr().err


# ---------------------------------------------------------------- state reused only with its fingerprint


def test_compare_reuses_a_finished_cell_only_if_its_config_is_the_one_asked_for(tmp_path):
    """Before: ``compare`` rerun with another ``--set`` called its cells "finished earlier" with the
    old settings while the leaderboard's header printed the new command."""
    from fusionzoo.compare.grid import Cell
    from fusionzoo.compare.runner import _same_config

    path = config_file(tmp_path, cfg(1))
    cell = Cell(name="fusion=concat_mlp", overrides=("train.lr=0.02",))
    run = cell.run_dir(tmp_path / "grid", 0)
    train(path, run_dir=run, overrides=[*cell.overrides, "seed=0"], log=False)
    assert _same_config(path, cell, 0, run)
    assert not _same_config(path, Cell(name="fusion=concat_mlp", overrides=("train.lr=0.03",)), 0, run)
    assert not _same_config(path, cell, 1, run)


# ---------------------------------------------------------------- short clips: one behaviour, refused


def test_a_clip_shorter_than_the_encoder_reads_is_refused_alone_batched_and_at_the_start(tmp_path):
    """Before: batched with longer clips, a 200-sample clip became a constant embedding while marked
    present (alone it was refused). Now it is refused in every case, and ``train`` names its row."""
    from common import MODALITIES, build_folder, data_section, write_rows, write_wav
    import numpy as np

    import fusionzoo as fz

    encoder = fz.ENCODERS.get("audio_spec_cnn").build(sample_rate=8000, n_fft=128, hop_length=64, n_mels=16, channels=[4, 4], out_dim=8)
    assert encoder.min_samples == 128 + 64 * 1
    with pytest.raises(ValueError, match=r"audio: AudioSpecCNN needs at least 192 samples per clip, got 100"):
        encoder(torch.randn(1, 100))
    with pytest.raises(ValueError, match=r"audio: lengths must be in \[192, 2000\] .*got values from 100 to 2000"):
        encoder(torch.randn(2, 2000), lengths=torch.tensor([2000, 100]))
    encoder(torch.randn(2, 2000), lengths=torch.tensor([2000, 192]))  # at the minimum: read
    root, rows = build_folder(tmp_path)
    write_wav(root / "wav" / "short.wav", np.zeros(100, dtype=np.float32), 8000)
    rows[4]["audio"] = "wav/short.wav"  # a validation row
    write_rows(root / "items.csv", rows)
    config = {
        "data": data_section(root, modalities={"audio": MODALITIES["audio"]}),
        "model": {"encoders": {"audio": {"name": "audio_spec_cnn", "sample_rate": 8000, "n_fft": 128, "hop_length": 64, "n_mels": 16,
                                         "channels": [4, 4], "out_dim": 8}},
                  "fusion": {"name": "concat_mlp", "out_dim": 8}, "head": {"name": "linear", "out_dim": 3}},
        "train": {"epochs": 1},
    }
    with pytest.raises(ConfigError, match=r"model\.encoders\.audio: AudioSpecCNN reads clips of at least 192 samples; 1 is smaller "
                                          r"in .*items\.csv: line 6 \(100 samples\)"):
        train(config, run_dir=tmp_path / "run", log=False)


def test_a_saved_folder_s_weights_are_checked_from_their_header_before_the_model_is_built(tmp_path):
    """A config asking for a width of 10^6 x 10^6 (4 TB) against weights of another shape is
    refused from the meta-device shapes, never allocated; integer weights are refused; float64
    weights are cast with a warning."""
    import warnings

    from safetensors.torch import load_file, save_file

    import fusionzoo as fz

    model = fz.build_model(cfg(1))
    model.save_pretrained(tmp_path / "saved")
    config = yaml.safe_load((tmp_path / "saved" / "config.yaml").read_text())
    config["model"]["fusion"]["hidden_dims"] = [1_000_000, 1_000_000]
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "huge" / "model.safetensors").write_bytes((tmp_path / "saved" / "model.safetensors").read_bytes())
    (tmp_path / "huge" / "README.md").write_text("")
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match config\.yaml: 'fusion\..*' has shape \[16, .*\] in the weights, \[1000000, .*\] in the model"):
        fz.from_pretrained(tmp_path / "huge")
    weights = load_file(str(tmp_path / "saved" / "model.safetensors"))
    key = next(k for k, v in weights.items() if v.is_floating_point())
    save_file({**weights, key: weights[key].to(torch.int32)}, str(tmp_path / "saved" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"{re.escape(key)}' is stored as I32, not as floating-point weights"):
        fz.from_pretrained(tmp_path / "saved")
    save_file({k: v.double() if v.is_floating_point() else v for k, v in weights.items()}, str(tmp_path / "saved" / "model.safetensors"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = fz.from_pretrained(tmp_path / "saved")
    assert any("stored as float64" in str(w.message) for w in caught)
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(loaded.state_dict()[key], weights[key])


# ---------------------------------------------------------------- weak cases: one line naming the file, row or column


def _manifest(tmp_path, text=None, rows=None, name="m.csv", **kw):
    from common import write_rows

    from fusionzoo.data.manifest import ManifestDataset

    path = tmp_path / name
    if text is not None:
        path.write_bytes(text)
    else:
        write_rows(path, rows)
    spec = kw.pop("modalities", {"t": {"column": "text", "kind": "text"}})
    return lambda: ManifestDataset(path=path, modalities=spec, label=kw.pop("label", {"column": "label"}), **kw)


@pytest.mark.parametrize("data, name, want", [
    (b"text,label,split\nok,a,train\n\xff\xfe bad,b,train\n", "m.csv", r"m\.csv: line 3: not UTF-8 text \(byte 0xff at column 1\)"),
    (b'{"text": "ok", "label": "a", "split": "train"}\n{"text": "caf\xe9", "label": "b", "split": "train"}\n', "m.jsonl",
     r"m\.jsonl: line 2: not UTF-8 text"),
    (__import__("gzip").compress(b"text,label,split\nok,a,train\n"), "m.csv", r"m\.csv: line 1: the file is gzip-compressed"),
    (b'{"text": "a", "text": "b", "label": "x", "split": "train"}\n', "m.jsonl", r"m\.jsonl: line 1: the key 'text' appears twice"),
    (b'{"text": "a", "label": true, "split": "train"}\n', "m.jsonl", r"line 1: column 'label': a label is a name or a number, got true"),
    (b"text,label,split\na,0,train\nb,0.0,train\n", "m.csv", r"the labels '0' and '0\.0' are one number spelled twice"),
    (b"text,label,split\na,01,train\nb,1,train\n", "m.csv", r"the labels '01' and '1' are one number spelled twice"),
])
def test_manifest_text_problems_name_the_file_and_line(tmp_path, data, name, want):
    with pytest.raises(ValueError, match=want):
        _manifest(tmp_path, data, name=name)()


def test_a_one_megabyte_cell_is_read_and_a_json_list_in_a_csv_multilabel_cell_is_a_list(tmp_path):
    big = " ".join(["word"] * 250_000)  # 1.2 MB: over csv's default field limit of 128 KiB
    ds = _manifest(tmp_path, rows=[{"text": big, "label": "a", "split": "train"}, {"text": "b", "label": "b", "split": "train"}])()
    assert len(ds) == 2
    ds = _manifest(tmp_path, rows=[{"text": "x", "tags": '["cat", "dog"]', "split": "train"}, {"text": "y", "tags": "cat", "split": "train"}],
                   label={"column": "tags", "task": "multilabel"})()
    assert ds.classes == ["cat", "dog"] and ds[0]["label"].tolist() == [1, 1]


def _npy_header(shape, descr="<f4"):
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@pytest.mark.parametrize("name, content, want", [
    ("f.npy", None, r"f\.npy is an \.npz archive, not an \.npy array"),
    ("f.npy", _npy_header((20_000_000_000,)), r"f\.npy: declares 20,000,000,000 values, more than a feature vector holds"),
    ("f.npy", _npy_header((3,), "<c8") + b"\x00" * 24, r"f\.npy: complex values \(complex64\); features are real"),
    ("f.safetensors", b"garbage that is not a safetensors file", r"f\.safetensors is not a readable safetensors file"),
])
def test_hostile_feature_files_are_cell_errors_that_on_error_skip_applies_to(tmp_path, name, content, want):
    import numpy as np

    from common import write_rows

    from fusionzoo.data.manifest import ManifestDataset

    if content is None:
        np.savez(tmp_path / "f.npz", a=np.zeros(3, np.float32))
        (tmp_path / "f.npz").rename(tmp_path / name)
    else:
        (tmp_path / name).write_bytes(content)
    np.save(tmp_path / "good.npy", np.zeros(3, np.float32))
    rows = [{"f": name, "label": "a", "split": "train"}, {"f": "good.npy", "label": "b", "split": "train"}]
    write_rows(tmp_path / "m.csv", rows)
    spec = {"f": {"column": "f", "kind": "features"}}
    with pytest.raises(ValueError, match=r"m\.csv: line 2: column 'f': .*" + want):
        ManifestDataset(path=tmp_path / "m.csv", modalities=spec, label={"column": "label"})
    kept = ManifestDataset(path=tmp_path / "m.csv", modalities=spec, label={"column": "label"}, on_error="skip")
    assert len(kept) == 1 and len(kept.skipped) == 1


def test_images_are_decoded_to_the_channels_asked_for_and_animated_ones_refused(tmp_path):
    from PIL import Image

    from fusionzoo.data.decode import CellError, ImageReader

    Image.new("RGB", (5, 4), (200, 10, 10)).save(tmp_path / "x.webp", format="WEBP", lossless=True)
    assert ImageReader(channels=1).decode(tmp_path / "x.webp").shape == (1, 4, 5)
    assert ImageReader(channels=3).decode(tmp_path / "x.webp").shape == (3, 4, 5)
    frames = [Image.new("RGB", (5, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(CellError, match=r"a\.gif is animated \(2 frames\)"):
        ImageReader(channels=3).decode(tmp_path / "a.gif")


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint_and_removes_symlinks_not_targets(tmp_path, monkeypatch):
    """Before: ``--overwrite`` deleted the old checkpoints, then the new run failed at batch 1 and
    nothing was left; a symlinked ``eval/`` made it crash (rmtree of a link)."""
    import fusionzoo.training.engine as engine

    run = tmp_path / "run"
    train(cfg(1), run_dir=run, log=False)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    elsewhere = tmp_path / "results"
    elsewhere.mkdir()
    (elsewhere / "keep.json").write_text("{}")
    (run / "eval").symlink_to(elsewhere, target_is_directory=True)

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory at batch 1")

    monkeypatch.setattr(engine, "_train_epoch", fail)
    with pytest.raises(RuntimeError, match="batch 1"):
        train(cfg(1, lr=0.02), run_dir=run, overwrite=True, log=False)
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()} == before  # the old run, back
    assert (run / "eval").is_symlink() and not (run / ".previous-run").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.01
    monkeypatch.undo()
    train(cfg(1, lr=0.02), run_dir=run, overwrite=True, log=False)
    assert not (run / "eval").exists() and (elsewhere / "keep.json").is_file()  # the link went, its target stayed
    assert not (run / ".previous-run").exists() and yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.02


def test_a_checkpoint_whose_state_the_safe_loader_refuses_is_one_line_and_resume_passes_over_it(tmp_path):
    from fusionzoo.training.checkpoint import MANIFEST, _sha256

    run = tmp_path / "run"
    train(cfg(2, keep_checkpoints=2), run_dir=run, log=False)
    newest = run / "checkpoints" / "epoch-002"
    state = next(p for p in newest.iterdir() if p.suffix == ".pt")
    torch.save({"epoch": 2, "evil": _Unsafe()}, state)  # a pickled class: refused by weights_only=True
    manifest = json.loads((newest / MANIFEST).read_text())
    manifest["sha256"][state.name] = _sha256(state)  # intact by its manifest: only the loader can tell
    (newest / MANIFEST).write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"--resume: skipping .*epoch-002: .*does not load with the safe loader \(weights_only\)"):
        summary = train(cfg(3, keep_checkpoints=2), run_dir=run, resume=True, log=False)
    assert summary["epochs_run"] == 3


class _Unsafe:
    pass


@pytest.mark.parametrize("name", ["label", "present", "audio_lengths", "text_features", "my-audio"])
def test_reserved_or_odd_modality_names_are_refused_at_config_time(name):
    from fusionzoo.config import load_config

    config = cfg(1)
    config["model"]["encoders"][name] = config["model"]["encoders"].pop("text")
    with pytest.raises(ConfigError, match=rf"model\.encoders\.{re.escape(name)}: not a modality name"):
        load_config(config)


def test_a_loss_or_optimizer_given_as_a_bare_name_says_how_to_write_it():
    from fusionzoo.config import load_config

    with pytest.raises(ConfigError, match=r"train\.loss: write \{name: mse\}"):
        load_config(cfg(1, loss="mse"))
    with pytest.raises(ConfigError, match=r"train\.optimizer: write \{name: sgd\}"):
        load_config(cfg(1, optimizer="sgd"))


def test_the_word_tokenizer_keeps_words_of_any_script_whole():
    from fusionzoo.vocab import tokenize

    assert tokenize("Grüße, Zoë! naïve café 東京 don't") == ["grüße", ",", "zoë", "!", "naïve", "café", "東京", "don't"]
    assert tokenize("Don't STOP", lower=False) == ["Don't", "STOP"]  # before: single capital letters


def test_a_bare_shipped_name_is_the_shipped_model_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    """One rule for ``from_pretrained`` and ``create_model``: a bare shipped name is the shipped model;
    a folder of that name is loaded when written as a path."""
    import fusionzoo as fz

    name = next(iter(fz.MODELS.list(tag="pretrained")))
    monkeypatch.chdir(tmp_path)
    fz.build_model(cfg(1)).save_pretrained(tmp_path / name)
    shipped, local = fz.from_pretrained(name), fz.from_pretrained(f"./{name}")
    assert shipped.modalities == fz.create_model(name).modalities and local.modalities == ("text", "visual")
    assert shipped.modalities != local.modalities or shipped.out_dim != local.out_dim


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_cell_process_dies_with_the_grid_that_started_it(tmp_path):
    """Before: SIGKILL of ``compare`` left its child training, holding the cell's run folder."""
    import signal

    child = "from fusionzoo.compare.runner import die_with_parent; die_with_parent(); import time; time.sleep(60)"
    parent = (
        "import os, subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}], env={{**os.environ, 'FUSIONZOO_DIE_WITH_PARENT': str(os.getpid())}})\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    grid = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=subprocess_env())
    pid = int(grid.stdout.readline())
    time.sleep(3)  # the child has imported fusionzoo and made its request
    os.kill(grid.pid, signal.SIGKILL)
    grid.wait()
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the child outlived its grid")


def test_embed_writes_absent_rows_for_a_batch_without_a_modality(tmp_path):
    from safetensors.torch import load_file

    from fusionzoo.training import embed_run

    config = _manifest_run(tmp_path, {"column": "label"}, out_dim=3)
    rows_path = config["data"]["path"]
    text = Path(rows_path).read_text().splitlines()
    header = text[0].split(",")
    cells = text[1].split(",")
    cells[header.index("caption")] = ""
    Path(rows_path).write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
    train(config, run_dir=tmp_path / "run", log=False)
    (path,) = embed_run(tmp_path / "run", splits=["train"], out=tmp_path / "feats", batch_size=1)  # the first batch has no text at all
    tensors = load_file(str(path))
    assert tensors["present.text"][0] == 0 and torch.all(tensors["features.text"][0] == 0) and tensors["present.text"][1:].all()


def test_export_flags_are_checked_and_a_run_exports_at_its_data_s_shapes(finished, tmp_path, capsys):
    from fusionzoo.config import build_dataset
    from fusionzoo.data.loader import make_loader
    from fusionzoo.hub import input_shapes

    shapes = input_shapes(finished)  # from the run's test split, not the encoders' examples
    batch = next(iter(make_loader(build_dataset(load_run(finished)[1], "test"), 256)))
    assert shapes["visual"] == list(batch["visual"].shape[1:])
    for args, want in ((["--out", str(tmp_path)], "a folder; give the file to write (model.pt2)"),
                       (["--out", str(tmp_path / "m.pt2"), "--shape", "depth=3"], "'depth' is not a modality of the model"),
                       (["--out", str(tmp_path / "m.pt2"), "--shape", "visual=a,b"], "--shape visual=a,b: expected MODALITY=D1,D2"),
                       (["--out", str(tmp_path / "m.pt2"), "--shape", "visual=0,8,8"], "--shape visual=0,8,8: expected MODALITY=D1,D2")):
        assert main(["export", str(finished), *args]) == 2, args
        assert want in capsys.readouterr().err, args


@pytest.mark.parametrize("change, want", [
    (lambda t, m: t.pop("present.text"), r"has no tensor 'present\.text'"),
    (lambda t, m: t.update({"features.text": torch.zeros(t["label"].shape[0], 99)}), r"'features\.text' is torch\.float32 \[\d+, 99\], the metadata"),
    (lambda t, m: t.update({"present.text": torch.ones(3, dtype=torch.uint8)}), r"'present\.text' has shape \[3\]"),
    (lambda t, m: m.update({"dims": "nonsense"}), r"its dims metadata is not \{modality: width\}"),
])
def test_hostile_feature_files_are_named_errors(finished, tmp_path, change, want):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fusionzoo.data.features import FeatureDataset
    from fusionzoo.training import embed_run

    (path,) = embed_run(finished, splits=["val"], out=tmp_path / "feats")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, meta)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"features: .*val\.safetensors.*" + want):
        FeatureDataset(path=tmp_path / "feats", split="val")


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_a_full_or_read_only_disk_is_one_line_naming_the_folder_and_leaves_no_temporary_file(finished, monkeypatch, capsys, code):
    import errno

    import fusionzoo.atomic as atomic

    def full(fd):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), "x")

    monkeypatch.setattr(atomic.os, "fsync", full)
    assert main(["eval", str(finished), "--levels", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{os.strerror(getattr(errno, code))} (writing into {finished / 'eval' / 'levels=0'})" in err
    assert not [p for p in finished.rglob(".*") if p.is_file() and p.name.startswith(".results")]


def test_images_smaller_than_the_encoder_reads_are_refused_at_the_start_naming_rows(tmp_path):
    """Before: a 1x1 image (here the folder's 12x12 ones, without a size to resize to) failed at its
    first batch with no file or line."""
    from common import MODALITIES, build_folder, data_section

    root, _ = build_folder(tmp_path)
    visual = {k: v for k, v in MODALITIES["visual"].items() if k != "size"}
    config = {
        "data": data_section(root, modalities={"visual": visual}),
        "model": {"encoders": {"visual": {"name": "visual_cnn", "in_channels": 1, "channels": [4], "out_dim": 8}},
                  "fusion": {"name": "concat_mlp", "out_dim": 8}, "head": {"name": "linear", "out_dim": 3}},
        "train": {"epochs": 1},
    }
    with pytest.raises(ConfigError, match=r"model\.encoders\.visual: VisualCNN reads images of at least 16x16 pixels; \d+ are smaller in "
                                          r".*items\.csv: line 2 \(12x12 pixels\), line 3 \(12x12 pixels\)"):
        train(config, run_dir=tmp_path / "run", log=False)
    config["data"]["modalities"]["visual"]["size"] = [8, 8]
    with pytest.raises(ConfigError, match=r"VisualCNN reads images of at least 16x16 pixels; 1 is smaller .*\(8x8 pixels\)"):
        train(config, run_dir=tmp_path / "run", log=False)


@pytest.mark.parametrize("name", __import__("fusionzoo").list_fusions())
def test_a_block_remembers_passing_inputs_but_checks_anything_new(name):
    """``prepare`` skips the checks for inputs shaped as the last ones that passed; a new width, batch
    size, dtype or order is checked in full and named, and so is any call after a cast of a model
    holding the block."""
    import fusionzoo as fz

    block = fz.FUSIONS.get(name).example().eval()
    feats = block.example_input(2)
    first = block(feats)
    assert torch.equal(block(feats), first)  # remembered: the same result
    m = sorted(feats)[0]
    with pytest.raises(ValueError, match=rf"features\['{m}'\]"):
        block({**feats, m: feats[m][..., :-1]})
    with pytest.raises(ValueError, match="batch size"):
        block({**feats, m: feats[m][:1]})
    with pytest.raises(TypeError, match=rf"features\['{m}'\] is float64"):
        block({**feats, m: feats[m].double()})
    assert torch.equal(block(feats), first)
    assert torch.equal(block(dict(reversed(feats.items()))), first)  # another order: the block's order all the same
    holder = torch.nn.ModuleDict({"fusion": block}).double()
    with pytest.raises(TypeError, match="parameters are float64"):
        block(feats)
    holder.float()
    assert torch.equal(block(feats), first)
