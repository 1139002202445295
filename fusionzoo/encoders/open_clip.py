"""OpenCLIP towers: ``open_clip_image`` and ``open_clip_text``, the two halves of one CLIP model.

Legend: ``b`` batch, ``l`` context tokens, ``n`` image tokens, ``d`` embedding width.

``model=`` is what ``open_clip.create_model_and_transforms`` takes: a built-in architecture
(``ViT-B-32``) with ``pretrained=`` a tag (``laion2b_s34b_b79k``, downloaded into the cache) or a
local weights file, ``hf-hub:org/repo``, or ``local-dir:/path`` (a folder with
``open_clip_config.json`` and, optionally, weights). Each tower owns its preprocessing: the model's
own tokenizer (context length, start and end tokens) or its evaluation image transform (resize,
crop, CLIP mean/std). ``out_dim=None`` keeps CLIP's shared embedding width, so the image and text
towers of one checkpoint in an ``align:`` config start in CLIP's joint space: zero-shot retrieval
works before any training (tested), and training fine-tunes it.

Pooled outputs are ``encode_image`` / ``encode_text`` (unnormalised; the contrastive losses normalise).
Tokens are the image patch tokens and the text's tokens up to its end token, both projected into the
shared width. A text longer than the context raises unless ``truncation=True`` (then cut, with a warning).

``open_clip`` is imported when a tower is built, never by ``import fusionzoo``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusionzoo.encoders.base import Encoder
from fusionzoo.encoders.preprocess import ImagePreprocessor, PerImage
from fusionzoo.extras import require
from fusionzoo.layers.validation import check_tensor
from fusionzoo.registry import ENCODERS

__all__ = ["OpenCLIPImageEncoder", "OpenCLIPTextEncoder", "TINY_CLIP"]

#: A tiny CLIP architecture (random weights) for tests and examples: ``model=TINY_CLIP``.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@contextlib.contextmanager
def _quiet():
    """No "initialized randomly" warning where random weights are what was asked for (the fusionzoo
    weights are loaded over them)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _load(model: str | dict, pretrained: str | None, what: str) -> tuple[Any, Any, Any, dict]:
    """``(clip model, tokenizer, image transform, {"model_cfg", "preprocess_cfg"})``."""
    open_clip = require("open_clip", what)
    if isinstance(model, dict):  # an architecture to build with random weights
        if pretrained is not None:
            raise ValueError(f"{what}: pretrained= needs a named architecture, not a config mapping")
        name, cfg = None, {"model_cfg": dict(model)}
    else:
        name, cfg = str(model), None
    try:
        if name is None:  # open_clip builds an architecture from a folder holding its config
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "open_clip_config.json").write_text(json.dumps(cfg))
                with _quiet():
                    clip, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}", load_weights=False)
                tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        else:
            local = name.startswith("local-dir:")
            weights = local and any(Path(name.removeprefix("local-dir:")).glob(p) for p in ("*.safetensors", "*.bin", "*.pth"))
            with _quiet() if (local and not weights) or (not local and pretrained is None) else contextlib.nullcontext():
                clip, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained, load_weights=not local or weights)
            tokenizer = open_clip.get_tokenizer(name)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{what}: cannot load it ({first}). A pretrained tag or hf-hub: name must be in the cache when there is no "
            "network; pass a local weights file as pretrained=, or model='local-dir:/path'"
        ) from None
    if cfg is None:
        cfg = {"model_cfg": _model_cfg(open_clip, name)}
    cfg["preprocess_cfg"] = dict(open_clip.get_model_preprocess_cfg(clip))
    return clip, tokenizer, transform, cfg


def _model_cfg(open_clip: Any, name: str) -> dict:
    if name.startswith("local-dir:"):
        return json.loads((Path(name.removeprefix("local-dir:")) / "open_clip_config.json").read_text())["model_cfg"]
    if name.startswith("hf-hub:"):
        return open_clip.factory._get_hf_config(name.removeprefix("hf-hub:"))["model_cfg"]
    return dict(open_clip.get_model_config(name))


class _OpenCLIPTower(Encoder):
    takes_raw = True
    registry_name = "open_clip"

    def _setup(self, model: str | dict, pretrained: str | None, out_dim: int | None) -> tuple[Any, Any, Any]:
        if out_dim is not None and (isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1):
            raise ValueError(f"{self.modality}: out_dim must be a positive int or None, got {out_dim!r}")
        self.what = f"{self.registry_name} (model={model!r})" if not isinstance(model, dict) else self.registry_name
        clip, tokenizer, transform, self.open_clip_config = _load(model, pretrained, self.what)
        self.embed_dim = int(self.open_clip_config["model_cfg"]["embed_dim"])
        self.proj: nn.Module = nn.Identity() if out_dim is None else nn.Linear(self.embed_dim, out_dim)
        self.out_dim = self.embed_dim if out_dim is None else out_dim
        return clip, tokenizer, transform

    def preprocess(self, raws: Sequence[Any]) -> Any:
        """The batch input for ``raws`` (strings or decoded images)."""
        return self.preprocessor(raws)

    def save_preprocessing(self, folder: Path) -> dict[str, Any]:
        """``open_clip_config.json`` (architecture and preprocessing; the weights are fusionzoo's):
        rebuilt as ``local-dir:`` with random weights, then loaded."""
        (folder / "open_clip_config.json").write_text(json.dumps(self.open_clip_config, indent=1))
        return {"model": f"local-dir:{folder}", "pretrained": None}


@ENCODERS.register(
    "open_clip_image",
    example_kwargs={"model": TINY_CLIP, "out_dim": 24},
    reference_kwargs={"model": "ViT-B-32"},  # random weights: no pretrained tag
    modality="visual",
    paper="https://arxiv.org/abs/2103.00020",
    tags=("pretrained", "transformer", "clip", "extra:clip"),
)
class OpenCLIPImageEncoder(_OpenCLIPTower):
    """OpenCLIP's image tower (``encode_image``) with its evaluation transform; the encoder
    standardises its input with CLIP's mean/std, so the data must not.

    Shapes: ``preprocess(list[[c, h, w]])`` -> ``float [b, 3, H, W]`` -> ``[b, out_dim]``; tokens ``[b, n, out_dim]``.
    """

    registry_name = "open_clip_image"
    normalizes_input = True

    def __init__(self, *, model: str | dict, pretrained: str | None = None, out_dim: int | None = None, modality: str = "visual") -> None:
        super().__init__()
        self.modality = modality
        clip, _, transform = self._setup(model, pretrained, out_dim)
        self.visual = clip.visual
        self.preprocessor = ImagePreprocessor(PerImage(transform), channels=3, modality=modality)

    def _check(self, x: object) -> Tensor:
        return check_tensor(x, name=self.modality, shape=("B", 3, "H", "W"), what="pixel values (encoder.preprocess(images))")

    def forward(self, x: Tensor) -> Tensor:
        self.visual.output_tokens = False
        return self.proj(self.visual(self._check(x)))

    def forward_tokens(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        self.visual.output_tokens = True
        try:
            _, tokens = self.visual(self._check(x))
        finally:
            self.visual.output_tokens = False
        if self.visual.proj is not None:
            tokens = tokens @ self.visual.proj
        return self.proj(tokens), None

    def example_input(self, batch_size: int = 2) -> Tensor:
        g = torch.Generator().manual_seed(batch_size)
        return self.preprocess([torch.rand(3, 24 + 8 * (i % 3), 40, generator=g) for i in range(batch_size)])


class CLIPTextPreprocessor:
    """Strings -> ``long [b, context_length]`` with OpenCLIP's tokenizer; a text longer than the
    context raises unless ``truncation`` (then cut by the tokenizer, the first cut reported)."""

    def __init__(self, tokenizer: Any, *, truncation: bool, modality: str = "text") -> None:
        self.tokenizer, self.truncation, self.modality = tokenizer, bool(truncation), modality
        self.context_length = int(tokenizer.context_length)
        self.truncated = 0

    def __call__(self, texts: Sequence[str]) -> Tensor:
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"{self.modality}: sample {i} is {type(t).__name__}, expected a string (open_clip_text tokenizes raw text)")
        encode = getattr(self.tokenizer, "encode", None)
        if encode is not None:  # the BPE tokenizers: start and end tokens besides the text's
            lengths = [len(encode(t)) + 2 for t in texts]
            too_long = [i for i, n in enumerate(lengths) if n > self.context_length]
            if too_long and not self.truncation:
                i = too_long[0]
                raise ValueError(
                    f"{self.modality}: sample {i} has {lengths[i]} tokens, more than the context length {self.context_length}; "
                    "set truncation: true to cut them"
                )
            if too_long:
                if self.truncated == 0:
                    warnings.warn(f"{self.modality}: texts longer than {self.context_length} tokens are cut (truncation: true)", stacklevel=2)
                self.truncated += len(too_long)
        return self.tokenizer(texts)


@ENCODERS.register(
    "open_clip_text",
    example_kwargs={"model": TINY_CLIP, "out_dim": 24},
    reference_kwargs={"model": "ViT-B-32"},
    modality="text",
    paper="https://arxiv.org/abs/2103.00020",
    tags=("pretrained", "transformer", "clip", "extra:clip"),
)
class OpenCLIPTextEncoder(_OpenCLIPTower):
    """OpenCLIP's text tower (``encode_text``) with its tokenizer.

    Shapes: ``preprocess(list[str])`` -> ``long [b, l]`` -> ``[b, out_dim]``; tokens ``[b, l, out_dim]``
    with mask ``[b, l]`` (True up to and including the end token).
    """

    registry_name = "open_clip_text"

    def __init__(
        self, *, model: str | dict, pretrained: str | None = None, out_dim: int | None = None, truncation: bool = False, modality: str = "text",
    ) -> None:
        super().__init__()
        self.modality = modality
        clip, tokenizer, _ = self._setup(model, pretrained, out_dim)
        clip.visual = None  # the image tower is the other encoder's
        for name in ("logit_scale", "logit_bias"):  # the contrastive loss owns the temperature here
            if isinstance(getattr(clip, name, None), nn.Parameter):
                self.register_buffer(name, getattr(clip, name).detach().clone(), persistent=False)
                delattr(clip, name)
        self.clip = clip
        self.preprocessor = CLIPTextPreprocessor(tokenizer, truncation=truncation, modality=modality)

    def _check(self, ids: object) -> Tensor:
        return check_tensor(ids, name=self.modality, shape=("B", "L"), dtype="int", what="token ids (encoder.preprocess(texts))")

    def forward(self, ids: Tensor) -> Tensor:
        return self.proj(self.clip.encode_text(self._check(ids)))

    def forward_tokens(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        clip = self.clip
        ids = self._check(ids)
        cast = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(ids).to(cast) + clip.positional_embedding.to(cast)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        if clip.text_projection is not None:
            x = clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
        if getattr(clip, "text_pool_type", "argmax") == "eos":  # the tokenizer's own end token
            end = (ids == clip.text_eos_id).int().argmax(dim=-1)
        else:  # CLIP's end token has the largest id
            end = ids.argmax(dim=-1)
        mask = torch.arange(ids.shape[1], device=ids.device) <= end.unsqueeze(1)
        return self.proj(x), mask

    def example_input(self, batch_size: int = 2) -> Tensor:
        words = ["a photo of a cat", "a red circle", "two dogs", "a small bird singing at night", "blue"]
        return self.preprocess([words[i % len(words)] for i in range(batch_size)])
