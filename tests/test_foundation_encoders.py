"""Foundation encoders against their libraries: ``hf_text``, ``hf_audio``, ``hf_vision`` give exactly what
``transformers.AutoModel`` + its tokenizer / feature extractor / image processor give, ``timm`` what
``timm.create_model`` + its data config give; preprocessing, bad input and the missing extra."""

import subprocess
import sys

import pytest
import torch

import fusionzoo as fz
from fusionzoo.extras import MissingExtraError, require

from common import ROOT
from foundation import AUDIO_CONFIGS, TEXT_CONFIGS, VISION_CONFIGS, audio_model, text_model, transformers, vision_model

TEXTS = ["a small cat", "the big dog at night", "owl", "one red circle and a blue square"]


def _masked_mean(hidden, mask):
    mask = mask.bool().unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1)


# ---------------------------------------------------------------- text


@pytest.mark.parametrize("arch", sorted(TEXT_CONFIGS))
def test_hf_text_equals_automodel_and_autotokenizer_with_a_masked_mean(tmp_path, arch):
    tr = transformers()
    folder = text_model(tmp_path / arch, arch)
    enc = fz.create_encoder("hf_text", model=str(folder), pool="mean").eval()
    ref_tok, ref_model = tr.AutoTokenizer.from_pretrained(folder), tr.AutoModel.from_pretrained(folder).eval()
    batch = ref_tok(TEXTS, padding=True, return_tensors="pt")
    if arch == "distilbert":
        batch.pop("token_type_ids", None)
    with torch.no_grad():
        want = _masked_mean(ref_model(**batch).last_hidden_state, batch["attention_mask"])
        x = enc.preprocess(TEXTS)
        got = enc(x)
        tokens, mask = enc.forward_tokens(x)
    assert enc.out_dim == ref_model.config.hidden_size if arch != "distilbert" else enc.out_dim == 32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(mask, batch["attention_mask"].bool())
    assert tokens.shape == (4, batch["input_ids"].shape[1], enc.out_dim)


def test_hf_text_cls_pooler_layer_and_projection(tmp_path):
    tr = transformers()
    folder = text_model(tmp_path / "bert")
    ref_tok, ref_model = tr.AutoTokenizer.from_pretrained(folder), tr.AutoModel.from_pretrained(folder).eval()
    batch = ref_tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = ref_model(**batch, output_hidden_states=True)
        cls = fz.create_encoder("hf_text", model=str(folder), pool="cls").eval()
        pooler = fz.create_encoder("hf_text", model=str(folder), pool="pooler").eval()
        middle = fz.create_encoder("hf_text", model=str(folder), pool="mean", layer=1).eval()
        torch.testing.assert_close(cls(cls.preprocess(TEXTS)), out.last_hidden_state[:, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pooler(pooler.preprocess(TEXTS)), out.pooler_output, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(middle(middle.preprocess(TEXTS)), _masked_mean(out.hidden_states[1], batch["attention_mask"]), rtol=1e-5, atol=1e-6)
    proj = fz.create_encoder("hf_text", model=str(folder), out_dim=7)
    assert proj.out_dim == 7 and proj(proj.preprocess(TEXTS)).shape == (4, 7)
    assert not any(p.requires_grad for p in cls.backbone.pooler.parameters()) if cls.backbone.pooler is not None else True


def test_hf_text_length_limit_is_an_error_or_an_explicit_truncation(tmp_path):
    folder = text_model(tmp_path / "bert", max_length=8)
    enc = fz.create_encoder("hf_text", model=str(folder))
    assert enc.max_length == 8
    long = " ".join(["cat"] * 20)
    with pytest.raises(ValueError, match=r"text: sample 1 has 22 tokens, more than max_length=8 .*truncation: true"):
        enc.preprocess(["owl", long])
    cut = fz.create_encoder("hf_text", model=str(folder), truncation=True)
    with pytest.warns(UserWarning, match="cut"):
        x = cut.preprocess(["owl", long])
    assert x["input_ids"].shape == (2, 8) and cut.preprocessor.truncated == 1
    assert x["input_ids"][1, -1] == cut.preprocessor.tokenizer.sep_token_id  # cut by the tokenizer: [SEP] kept
    with pytest.raises(ValueError, match="more than the model's 40 positions"):
        fz.create_encoder("hf_text", model=str(folder), max_length=100)


def test_hf_text_rejects_a_tokenizer_that_does_not_belong_and_non_strings(tmp_path):
    folder = text_model(tmp_path / "bert")
    with pytest.raises(ValueError, match="tokenizer has 5[0-9] tokens but the model's vocabulary has 40"):
        fz.create_encoder("hf_text", model=str(folder), tokenizer=[f"w{i}" for i in range(50)])
    enc = fz.create_encoder("hf_text", model=str(folder))
    with pytest.raises(TypeError, match=r"text: sample 0 is torch.int64 \[3\], expected a string"):
        enc.preprocess([torch.tensor([1, 2, 3])])
    with pytest.raises(TypeError, match="takes the dict encoder.preprocess"):
        enc(torch.zeros(2, 3, dtype=torch.long))


def test_hf_folders_and_hub_names_fail_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"not a Hugging Face model folder \(no config.json\)"):
        fz.create_encoder("hf_text", model=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"cannot load 'no-such-org/no-such-model' .*local folder written by save_pretrained"):
        fz.create_encoder("hf_text", model="no-such-org/no-such-model")
    with pytest.raises(ValueError, match="needs tokenizer="):
        fz.create_encoder("hf_text", model=dict(TEXT_CONFIGS["bert"]))
    with pytest.raises(ValueError, match="pool must be one of"):
        fz.create_encoder("hf_text", model=str(text_model(tmp_path / "bert")), pool="max")


# ---------------------------------------------------------------- audio


def _waves(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [0.3 * torch.randn(n, generator=g) for n in lengths]


@pytest.mark.parametrize("arch", sorted(AUDIO_CONFIGS))
def test_hf_audio_equals_automodel_and_feature_extractor_with_a_masked_mean(tmp_path, arch):
    tr = transformers()
    folder = audio_model(tmp_path / arch, arch)
    enc = fz.create_encoder("hf_audio", model=str(folder)).eval()
    extractor, ref_model = tr.AutoFeatureExtractor.from_pretrained(folder), tr.AutoModel.from_pretrained(folder).eval()
    waves = _waves(3200, 1600, 2400)
    batch = extractor([w.numpy() for w in waves], sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref_model(**batch).last_hidden_state
        frames = ref_model._get_feature_vector_attention_mask(hidden.shape[1], batch["attention_mask"])
        want = _masked_mean(hidden, frames)
        got = enc(enc.preprocess(waves))
        tokens, mask = enc.forward_tokens(enc.preprocess(waves))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(mask, frames.bool()) and mask.sum(1).tolist()[0] > mask.sum(1).tolist()[1]


def test_hf_audio_resamples_from_the_data_rate_or_refuses(tmp_path):
    import torchaudio.functional as AF

    folder = audio_model(tmp_path / "w2v")
    enc = fz.create_encoder("hf_audio", model=str(folder), sample_rate=8000).eval()
    waves = _waves(1600, 1200)
    with torch.no_grad():
        got = enc(enc.preprocess(waves))
        native = fz.create_encoder("hf_audio", model=str(folder)).eval()
        want = native(native.preprocess([AF.resample(w, 8000, 16000) for w in waves]))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    strict = fz.create_encoder("hf_audio", model=str(folder), sample_rate=8000, resample=False)
    with pytest.raises(ValueError, match=r"audio: the audio is at 8000 Hz, the model reads 16000 Hz \(resample: false\)"):
        strict.preprocess(waves)
    with pytest.raises(ValueError, match=r"audio: sample 1 has 40 samples at 16000 Hz, fewer than the model's receptive field \(45\)"):
        native.preprocess(_waves(2000, 40))
    with pytest.raises(ValueError, match="no CLS token"):
        fz.create_encoder("hf_audio", model=str(folder), pool="cls")


def test_hf_audio_model_trained_without_an_attention_mask_reads_zero_padding(tmp_path):
    """wav2vec2-base style: the extractor says the model never saw a mask, so none is passed; the
    pooling still counts only the frames of real samples."""
    tr = transformers()
    folder = audio_model(tmp_path / "w2v", "hubert", attention_mask=False)
    enc = fz.create_encoder("hf_audio", model=str(folder)).eval()
    assert not enc.pass_mask
    waves = _waves(3200, 1600)
    extractor, ref_model = tr.AutoFeatureExtractor.from_pretrained(folder), tr.AutoModel.from_pretrained(folder).eval()
    batch = extractor([w.numpy() for w in waves], sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref_model(input_values=batch["input_values"]).last_hidden_state
        want = _masked_mean(hidden, ref_model._get_feature_vector_attention_mask(hidden.shape[1], batch["attention_mask"]))
        torch.testing.assert_close(enc(enc.preprocess(waves)), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- vision


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 40, 48, generator=g), torch.rand(3, 24, 24, generator=g), (255 * torch.rand(3, 64, 32, generator=g)).to(torch.uint8)]


@pytest.mark.parametrize("arch", sorted(VISION_CONFIGS))
def test_hf_vision_equals_automodel_and_image_processor(tmp_path, arch):
    tr = transformers()
    folder = vision_model(tmp_path / arch, arch)
    pool = "cls" if arch == "vit" else "pooler"
    enc = fz.create_encoder("hf_vision", model=str(folder), pool=pool).eval()
    processor, ref_model = tr.AutoImageProcessor.from_pretrained(folder), tr.AutoModel.from_pretrained(folder).eval()
    images = _images()
    floats = [x.float() / 255 if x.dtype == torch.uint8 else x for x in images]
    pixels = processor(floats, do_rescale=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = ref_model(pixel_values=pixels)
        want = out.last_hidden_state[:, 0] if arch == "vit" else out.pooler_output
        x = enc.preprocess(images)
        torch.testing.assert_close(x, pixels, rtol=0, atol=0)
        torch.testing.assert_close(enc(x), want, rtol=1e-5, atol=1e-6)
        tokens, mask = enc.forward_tokens(x)
    assert mask is None and tokens.shape[0] == 3 and tokens.shape[2] == enc.out_dim
    assert enc.normalizes_input


def test_hf_vision_grey_images_become_rgb_and_other_channels_fail(tmp_path):
    folder = vision_model(tmp_path / "vit")
    enc = fz.create_encoder("hf_vision", model=str(folder)).eval()
    grey = torch.rand(1, 28, 28)
    torch.testing.assert_close(enc.preprocess([grey]), enc.preprocess([grey.expand(3, -1, -1)]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="visual: sample 0 has 2 channels, the model reads 3"):
        enc.preprocess([torch.rand(2, 28, 28)])
    with pytest.raises(TypeError, match=r"visual: sample 0 is torch.float32 \[28, 28\], expected a decoded image"):
        enc.preprocess([torch.rand(28, 28)])
    with pytest.raises(ValueError, match="CNN .* has no CLS token"):
        fz.create_encoder("hf_vision", model=str(vision_model(tmp_path / "cnx", "convnext")), pool="cls")


# ---------------------------------------------------------------- timm


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_timm_equals_create_model_and_its_data_config(tmp_path, arch):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model(arch, pretrained=False, num_classes=0).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(ref.state_dict(), path)
    enc = fz.create_encoder("timm", model=arch, checkpoint=str(path)).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=ref), is_training=False)
    images = _images()
    floats = [x.float() / 255 if x.dtype == torch.uint8 else x for x in images]
    pixels = torch.stack([transform(x) for x in floats])
    with torch.no_grad():
        want = ref(pixels)
        x = enc.preprocess(images)
        torch.testing.assert_close(x, pixels, rtol=0, atol=0)
        torch.testing.assert_close(enc(x), want, rtol=1e-5, atol=1e-6)
        tokens, _ = enc.forward_tokens(x)
    assert enc.out_dim == ref.num_features and tokens.shape[2] == ref.num_features
    want_tokens = ref.forward_features(pixels)
    assert tokens.shape[1] == (want_tokens.shape[1] if want_tokens.dim() == 3 else want_tokens.shape[2] * want_tokens.shape[3])


def test_timm_bad_names_and_files(tmp_path):
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match="not a timm architecture"):
        fz.create_encoder("timm", model="resnet_does_not_exist")
    with pytest.raises(ValueError, match="checkpoint .* not found"):
        fz.create_encoder("timm", model="test_resnet", checkpoint=str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------- extras


def test_import_fusionzoo_imports_no_foundation_library():
    code = "import sys, fusionzoo\nprint(sorted(m for m in ('transformers', 'timm', 'open_clip', 'peft', 'tokenizers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name.partition(".")[0] in ("transformers", "timm"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(MissingExtraError, match=r"pip install 'fusionzoo\[hf\]'"):
        require("transformers")
    with pytest.raises(MissingExtraError, match=r"timm \(model='test_resnet'\) needs the 'timm' library .*fusionzoo\[timm\]"):
        fz.create_encoder("timm", model="test_resnet")
    assert "hf_text" in fz.list_encoders() and "timm" in fz.list_encoders()  # listed all the same


def test_a_config_whose_extra_is_missing_is_one_cli_line_naming_the_key(monkeypatch, tmp_path, capsys):
    import importlib

    from fusionzoo.cli import main

    from common import config_file

    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) if name == "timm" else real(name, *a, **k))
    cfg = {"model": {"encoders": {"visual": {"name": "timm", "model": "resnet18"}, "audio": {"name": "feature_mlp", "in_dim": 4, "out_dim": 4}},
                     "fusion": {"name": "concat_mlp", "out_dim": 4}, "head": {"name": "linear", "out_dim": 2}}}
    assert main(["info", str(config_file(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.encoders.visual: timm (model='resnet18') needs the 'timm' library" in err and "fusionzoo[timm]" in err
