"""``timm``: any ``timm.create_model`` architecture as a visual encoder, with its own preprocessing.

Legend: ``b`` batch, ``n`` tokens, ``d`` features, ``c h w`` channels height width.

``model=`` is a timm name (``resnet50``, ``vit_base_patch16_224.augreg_in21k``, ``convnext_tiny``,
``hf-hub:`` names included); ``pretrained=True`` downloads its weights into the cache, ``checkpoint=``
loads a local file (``torch.save`` of a state dict, or safetensors). The preprocessing is timm's
own: ``resolve_data_config`` (input size, interpolation, crop, mean/std) and ``create_transform`` for
evaluation, applied to decoded float images in [0, 1] (timm's transform runs on tensors as on PIL
images). The encoder standardises its input, so the data must not.

Pooled features are ``forward_head(forward_features(x), pre_logits=True)``: the model's own pooling
(global average for CNNs, CLS or mean token for ViTs). Tokens are the ViT token sequence (prefix
tokens included) or a CNN's feature map positions.

``timm`` is imported when the encoder is built, never by ``import fusionzoo``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusionzoo.encoders.adapters import add_adapter
from fusionzoo.encoders.base import Encoder
from fusionzoo.encoders.preprocess import ImagePreprocessor, PerImage
from fusionzoo.extras import require
from fusionzoo.layers.validation import check_tensor
from fusionzoo.registry import ENCODERS

__all__ = ["TimmEncoder"]


@ENCODERS.register(
    "timm",
    example_kwargs={"model": "test_vit", "model_kwargs": {"img_size": 32, "patch_size": 8}, "out_dim": 24},
    reference_kwargs={"model": "vit_base_patch16_224"},
    modality="visual",
    paper="https://github.com/huggingface/pytorch-image-models",
    tags=("pretrained", "cnn", "transformer", "extra:timm"),
)
class TimmEncoder(Encoder):
    """A ``timm`` model without its classifier, pooled by its own head's pooling, projected to
    ``out_dim`` (None keeps ``num_features``). ``model_kwargs`` go to ``timm.create_model`` as they
    are (``img_size``, ``drop_path_rate``, ...).

    Shapes: ``preprocess(list[[c, h, w]])`` -> ``float [b, c, H, W]`` -> ``[b, out_dim]``; tokens
    ``[b, n, out_dim]`` (ViT: prefix tokens + patches; CNN: ``h * w`` positions).
    """

    takes_raw = True
    normalizes_input = True

    def __init__(
        self,
        *,
        model: str,
        pretrained: bool = False,
        checkpoint: str | Path | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        out_dim: int | None = None,
        in_channels: int = 3,
        gradient_checkpointing: bool = False,
        adapter: Mapping[str, Any] | None = None,
        modality: str = "visual",
    ) -> None:
        super().__init__()
        self.modality = modality
        what = f"timm (model={model!r})"
        timm = require("timm", what)
        if not isinstance(model, str):
            raise TypeError(f"{what}: model must be a timm model name, got {type(model).__name__}")
        if out_dim is not None and (isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1):
            raise ValueError(f"{modality}: out_dim must be a positive int or None, got {out_dim!r}")
        if not model.startswith("hf-hub:") and not timm.is_model(model):
            near = timm.list_models(f"*{model.split('.')[0][:6]}*")[:5]
            raise ValueError(f"{what}: not a timm architecture" + (f" (close: {near})" if near else ""))
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise ValueError(f"{what}: checkpoint {checkpoint} not found")
        try:
            backbone = timm.create_model(
                model, pretrained=pretrained, num_classes=0, in_chans=in_channels,
                checkpoint_path=str(checkpoint) if checkpoint is not None else "", **dict(model_kwargs or {}),
            )
        except (OSError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"{what}: cannot create it ({first}). pretrained=True needs the weights in the Hugging Face / torch cache "
                "when there is no network; checkpoint= takes a local file"
            ) from None
        if gradient_checkpointing:
            backbone.set_grad_checkpointing(True)
        self.adapter = None if adapter is None else dict(adapter)
        if adapter is not None:
            add_adapter(backbone, adapter, what=what)
        self.backbone = backbone
        self.hidden_dim = int(backbone.num_features)
        self.proj: nn.Module = nn.Identity() if out_dim is None else nn.Linear(self.hidden_dim, out_dim)
        self.out_dim = self.hidden_dim if out_dim is None else out_dim
        config = timm.data.resolve_data_config({}, model=backbone)
        size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
        if size is not None:  # a ViT built at another size (model_kwargs img_size) reads that size
            config["input_size"] = (in_channels, *size)
        self.data_config = dict(config)
        transform = timm.data.create_transform(**config, is_training=False)
        self.preprocessor = ImagePreprocessor(PerImage(transform), channels=in_channels, modality=modality)

    def save_preprocessing(self, folder: Path) -> dict[str, Any]:
        """Nothing to write (timm's preprocessing comes from the architecture's own data config); the
        rebuilt encoder must not download or read the weights the fusionzoo model already holds."""
        return {"pretrained": False, "checkpoint": None}

    def preprocess(self, images: Sequence[Any]) -> Tensor:
        """``float [b, c, H, W]`` for decoded images (uint8, or float in [0, 1]) of any size."""
        return self.preprocessor(images)

    def _check(self, x: object) -> Tensor:
        return check_tensor(x, name=self.modality, shape=("B", "C", "H", "W"), what="pixel values (encoder.preprocess(images))")

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone.forward_features(self._check(x))
        return self.proj(self.backbone.forward_head(feats, pre_logits=True))

    def forward_tokens(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        feats = self.backbone.forward_features(self._check(x))
        if feats.dim() == 4:  # CNN (NCHW feature map): its positions are the tokens
            feats = feats.flatten(2).transpose(1, 2)
        return self.proj(feats), None

    def example_input(self, batch_size: int = 2) -> Tensor:
        g = torch.Generator().manual_seed(batch_size)
        c = self.preprocessor.channels
        return self.preprocess([torch.rand(c, 24 + 8 * (i % 3), 32, generator=g) for i in range(batch_size)])
