"""``fusionzoo export``: torch.export programs and ONNX (with the optional extra), presence masks as inputs."""

import importlib.util
from pathlib import Path

import pytest
import torch

import fusionzoo as fz
from fusionzoo.cli import main as cli
from fusionzoo.export import ServingModel, check_onnx, example_inputs, export_onnx, export_pt2
from fusionzoo.hub import input_shapes
from tests.common import ROOT

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "models").glob("*.yaml")) + ["configs/experiments/quickstart.yaml"]
HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="the export extra is not installed: pip install 'fusionzoo[export]'")


SHIPPED = fz.list_models(tag="pretrained")


def _model(config):
    """A config's model with fresh weights, or a shipped model with its own (``shipped:<name>``)."""
    if config.startswith("shipped:"):
        return fz.create_model(config.removeprefix("shipped:"), pretrained=True)
    torch.manual_seed(0)
    return fz.build_model(ROOT / config).eval()


def _shapes(config):
    return input_shapes(config.removeprefix("shipped:")) if config.startswith("shipped:") else None


def _patterns(serving, batch_size, shapes=None):
    """Inputs with every modality present, with each one missing in some rows, and with one sample."""
    g = torch.Generator().manual_seed(1)
    cases = []
    for b in (batch_size, 1):
        inputs = list(example_inputs(serving, b, shapes))
        names = serving.input_names
        for i, name in enumerate(names):
            if name.startswith("present_"):
                inputs[i] = torch.rand(b, generator=g) > 0.4 if b > 1 else torch.ones(1, dtype=torch.bool)
        cases.append(tuple(inputs))
    return cases


@pytest.mark.compile
@pytest.mark.parametrize("config", CONFIGS + [f"shipped:{n}" for n in SHIPPED])
def test_pt2_export_matches_eager_for_any_batch_and_missing_pattern(config, tmp_path):
    model = _model(config)
    path = export_pt2(model, tmp_path / "model.pt2", _shapes(config))
    program = torch.export.load(path).module()
    serving = ServingModel(model)
    for inputs in _patterns(serving, 5, _shapes(config)):
        with torch.no_grad():
            torch.testing.assert_close(program(*inputs), serving(*inputs), rtol=1e-5, atol=1e-5)


@needs_onnx
@pytest.mark.compile
@pytest.mark.parametrize("config", CONFIGS + [f"shipped:{n}" for n in SHIPPED])
def test_onnx_export_matches_eager(config, tmp_path):
    import onnxruntime

    model = _model(config)
    path = export_onnx(model, tmp_path / "model.onnx", _shapes(config))
    serving = ServingModel(model)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == serving.input_names
    for inputs in _patterns(serving, 5, _shapes(config)):
        (out,) = session.run(["logits"], {n: x.numpy() for n, x in zip(serving.input_names, inputs)})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), serving(*inputs), rtol=1e-5, atol=1e-5)
    assert check_onnx(path, model, example_inputs(serving, 2, _shapes(config))) < 1e-4


def test_export_cli_writes_a_shipped_model_with_its_card_shapes(tmp_path, capsys):
    out = tmp_path / "m.pt2"
    assert cli(["export", "avdigits_concat_hard", "--format", "pt2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "inputs: audio, visual, audio_lengths, present_audio, present_visual" in printed and "'visual': [1, 28, 28]" in printed
    program = torch.export.load(out).module()
    model = fz.create_model("avdigits_concat_hard", pretrained=True)
    (samples,) = input_shapes("avdigits_concat_hard")["audio"]  # the longest test clip
    wave, image = torch.randn(3, samples), torch.randn(3, 1, 28, 28)
    lengths, audio, visual = torch.tensor([samples, 5000, 2000]), torch.tensor([True, False, True]), torch.tensor([True, True, False])
    with torch.no_grad():
        expected = model({"audio": wave, "visual": image, "audio_lengths": lengths, "present": {"audio": audio, "visual": visual}})
        torch.testing.assert_close(program(wave, image, lengths, audio, visual), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(HAVE_ONNX, reason="checks the message shown without the extra")
def test_onnx_without_the_extra_is_one_line(tmp_path, capsys):
    assert cli(["export", "quickstart_concat", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'fusionzoo[export]'" in capsys.readouterr().err
    assert not Path(tmp_path / "m.onnx").exists()


def test_export_of_an_unknown_source_is_one_line(tmp_path, capsys):
    assert cli(["export", "no_such_model", "--out", str(tmp_path / "m.pt2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a folder nor a shipped model" in err
