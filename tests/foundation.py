"""Tiny random-weight Hugging Face and timm models, written into a test's folder with the libraries'
own ``save_pretrained`` / ``torch.save``: how those libraries test themselves, with no download."""

from pathlib import Path

import pytest

WORDS = ["a", "small", "cat", "the", "big", "dog", "one", "owl", "at", "night", "red", "blue", "circle", "square"]
TEXT_CONFIGS = {
    "bert": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "vocab_size": 40, "max_position_embeddings": 40},
    "roberta": {"model_type": "roberta", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "vocab_size": 40, "max_position_embeddings": 42, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},
    "distilbert": {"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "vocab_size": 40,
                   "max_position_embeddings": 40},
    "electra": {"model_type": "electra", "hidden_size": 32, "embedding_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "vocab_size": 40, "max_position_embeddings": 40},
}
_CONV = {"conv_dim": [16, 16], "conv_stride": [5, 4], "conv_kernel": [10, 8], "num_conv_pos_embeddings": 16,
         "num_conv_pos_embedding_groups": 2, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
AUDIO_CONFIGS = {
    "wav2vec2": {"model_type": "wav2vec2", **_CONV, "do_stable_layer_norm": True, "feat_extract_norm": "layer"},
    "hubert": {"model_type": "hubert", **_CONV, "feat_extract_norm": "group"},
}
VISION_CONFIGS = {
    "vit": {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "image_size": 32, "patch_size": 8},
    "convnext": {"model_type": "convnext", "hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2, "patch_size": 4,
                 "image_size": 32},
}


def transformers():
    return pytest.importorskip("transformers")


def text_model(folder: Path, arch: str = "bert", max_length: int = 32) -> Path:
    """A random-weight ``arch`` text model and a WordPiece tokenizer over :data:`WORDS` in ``folder``."""
    from fusionzoo.encoders.hf import word_tokenizer

    tr = transformers()
    spec = dict(TEXT_CONFIGS[arch])
    config = tr.AutoConfig.for_model(spec.pop("model_type"), **spec)
    tr.AutoModel.from_config(config).save_pretrained(folder)
    word_tokenizer(WORDS, max_length=max_length).save_pretrained(folder)
    return folder


def audio_model(folder: Path, arch: str = "wav2vec2", attention_mask: bool = True) -> Path:
    tr = transformers()
    spec = dict(AUDIO_CONFIGS[arch])
    config = tr.AutoConfig.for_model(spec.pop("model_type"), **spec)
    tr.AutoModel.from_config(config).save_pretrained(folder)
    tr.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=attention_mask).save_pretrained(folder)
    return folder


def vision_model(folder: Path, arch: str = "vit") -> Path:
    tr = transformers()
    spec = dict(VISION_CONFIGS[arch])
    config = tr.AutoConfig.for_model(spec.pop("model_type"), **spec)
    tr.AutoModel.from_config(config).save_pretrained(folder)
    processor = tr.ViTImageProcessor if arch == "vit" else tr.ConvNextImageProcessor
    kwargs = {"size": {"height": 32, "width": 32}} if arch == "vit" else {"size": {"shortest_edge": 32}, "crop_pct": 0.875}
    processor(**kwargs).save_pretrained(folder)
    return folder


def offline(cfg: dict, folder: Path) -> dict:
    """``cfg`` with every hub model replaced by a tiny local one of its kind (``pretrained`` off), so a
    config that names hub checkpoints builds here with no network: its structure is what is tested."""
    makers = {"hf_text": text_model, "hf_audio": audio_model, "hf_vision": vision_model}
    section = cfg.get("model") or cfg.get("align")
    for m, enc in section["encoders"].items():
        if enc["name"] in makers and not Path(str(enc["model"])).is_dir():
            enc["model"] = str(makers[enc["name"]](folder / f"{m}-{enc['name']}"))
            enc.pop("tokenizer", None)
        if enc["name"] == "timm":
            enc["pretrained"] = False
        if enc["name"].startswith("open_clip_"):
            from fusionzoo.encoders.open_clip import TINY_CLIP

            enc["model"], enc["pretrained"] = dict(TINY_CLIP), None
    return cfg


def clip_folder(folder: Path) -> Path:
    """A tiny random-weight OpenCLIP model written as a ``local-dir:`` folder (config + safetensors)."""
    import json

    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    from fusionzoo.encoders.open_clip import TINY_CLIP

    folder.mkdir(parents=True)
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": preprocess}))
    model = open_clip.create_model("local-dir:" + str(folder), load_weights=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder
