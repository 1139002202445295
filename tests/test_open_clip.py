"""OpenCLIP towers against open_clip itself, the pair as an alignment model in CLIP's joint space,
and a classifier on both towers saved and loaded without the original folder."""

import shutil

import pytest
import torch

import fusionzoo as fz
from fusionzoo.hub import save_run
from fusionzoo.training import load_run, train

from common import build_folder
from foundation import clip_folder

open_clip = pytest.importorskip("open_clip")

TEXTS = ["a photo of a cat", "a red circle on a blue square", "two dogs", "owl"]


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 40, 48, generator=g), (255 * torch.rand(3, 32, 64, generator=g)).to(torch.uint8), torch.rand(1, 28, 28, generator=g)]


def test_the_towers_equal_open_clip_encode_image_and_encode_text(tmp_path):
    name = "local-dir:" + str(clip_folder(tmp_path / "clip"))
    ref, _, transform = open_clip.create_model_and_transforms(name)
    ref.eval()
    tokenizer = open_clip.get_tokenizer(name)
    image = fz.create_encoder("open_clip_image", model=name).eval()
    text = fz.create_encoder("open_clip_text", model=name).eval()
    floats = [x.float() / 255 if x.dtype == torch.uint8 else x for x in _images()]
    floats[2] = floats[2].expand(3, -1, -1)
    pixels = torch.stack([transform(x) for x in floats])
    with torch.no_grad():
        torch.testing.assert_close(image.preprocess(_images()), pixels, rtol=0, atol=0)
        torch.testing.assert_close(image(pixels), ref.encode_image(pixels), rtol=1e-5, atol=1e-6)
        ids = text.preprocess(TEXTS)
        torch.testing.assert_close(ids, tokenizer(TEXTS), rtol=0, atol=0)
        torch.testing.assert_close(text(ids), ref.encode_text(ids), rtol=1e-5, atol=1e-6)
        tokens, mask = text.forward_tokens(ids)
        # the pooled text feature is the end token's projected state: the last True of the mask
        end = mask.sum(1) - 1
        torch.testing.assert_close(tokens[torch.arange(4), end], ref.encode_text(ids), rtol=1e-5, atol=1e-6)
        patches, none = image.forward_tokens(pixels)
    assert mask.sum(1).tolist() == [len(tokenizer.encode(t)) + 2 for t in TEXTS]
    assert none is None and patches.shape == (3, 16, image.out_dim) and image.out_dim == text.out_dim == 32


def test_the_pair_as_an_alignment_model_starts_in_clip_s_joint_space(tmp_path):
    name = "local-dir:" + str(clip_folder(tmp_path / "clip"))
    ref = open_clip.create_model(name).eval()
    model = fz.build_model({"align": {"encoders": {"visual": {"name": "open_clip_image", "model": name},
                                                   "text": {"name": "open_clip_text", "model": name}}, "order": ["text", "visual"]}}).eval()
    images, texts = _images()[:2] * 2, TEXTS
    batch = {"visual": model.encoders["visual"].preprocess(images), "text": model.encoders["text"].preprocess(texts)}
    with torch.no_grad():
        ours = model(batch)
        want = torch.nn.functional.normalize(ref.encode_text(batch["text"]), dim=-1) @ torch.nn.functional.normalize(ref.encode_image(batch["visual"]), dim=-1).T
        got = torch.nn.functional.normalize(ours["text"], dim=-1) @ torch.nn.functional.normalize(ours["visual"], dim=-1).T
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # the same text -> image ranking as CLIP's, before any training


def test_long_texts_raise_or_are_cut_explicitly(tmp_path):
    name = "local-dir:" + str(clip_folder(tmp_path / "clip"))
    text = fz.create_encoder("open_clip_text", model=name)
    long = " ".join(["cat"] * 30)
    with pytest.raises(ValueError, match="text: sample 0 has 32 tokens, more than the context length 16"):
        text.preprocess([long])
    cut = fz.create_encoder("open_clip_text", model=name, truncation=True)
    with pytest.warns(UserWarning, match="cut"):
        assert cut.preprocess([long, "owl"]).shape == (2, 16)
    with pytest.raises(ValueError, match="cannot load it"):
        fz.create_encoder("open_clip_text", model="ViT-B-32", pretrained="no-such-tag")


@pytest.mark.slow
def test_a_classifier_on_both_towers_trains_saves_and_loads_without_the_folder(tmp_path):
    root, _ = build_folder(tmp_path, blank_every=3)
    name = "local-dir:" + str(clip_folder(tmp_path / "clip"))
    cfg = {
        "seed": 0,
        "data": {"name": "manifest", "path": str(root / "items.csv"), "label": {"column": "label"},
                 "modalities": {"visual": {"column": "image", "kind": "image"}, "text": {"column": "caption", "kind": "text"}}},
        "model": {"encoders": {"visual": {"name": "open_clip_image", "model": name}, "text": {"name": "open_clip_text", "model": name}},
                  "fusion": {"name": "attention", "out_dim": 16}, "head": {"name": "linear", "out_dim": 3}},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.001, "strategy": "linear_probe", "feature_cache": "memory"},
    }
    run = tmp_path / "run"
    train(cfg, run_dir=run, log=False)
    model, _, _ = load_run(run)
    from test_foundation_workflows import _test_batches

    batches = _test_batches(run, model)
    save_run(run, tmp_path / "saved")
    shutil.rmtree(tmp_path / "clip")
    loaded = fz.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        for batch in batches:
            assert torch.equal(loaded(batch), model(batch))
