"""What a fusion block's attention reads, per sample: weights the block computed, not attributions.

``attention_readings(fusion, features, present)`` (``prepare``d inputs) gives ``{name: [b]}`` for the
blocks that attend over modalities, and ``{}`` for the others:

* ``attention``: its softmax weight of each modality (``<m>``; they sum to 1 over those present);
* ``transformer``: the attention its CLS token pays in the last layer (mean over heads) to each
  modality's tokens (``<m>``); the rest goes to the CLS token itself;
* ``bottleneck``: the attention of the latents (mean over heads and latents) in the last
  cross-attention layer to each modality's tokens (``<m>``); the rest goes to the null token;
* ``cross_attention``: for each stream (target ``t`` reading source ``s``), the attention its last
  block pays to ``s``'s tokens (mean over heads and ``t``'s present tokens; ``<t><-<s>``); the rest
  goes to the null token, so a value near 0 is a stream that ignores its source. 0 where ``t`` is missing.

Every reading is 0 for a modality the sample lacks. The probabilities are the ones the block's SDPA
applies in eval mode (:func:`fusionzoo.layers.attention.attention_probs`, tested against it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusionzoo.fusion.attention import AttentionFusion
from fusionzoo.fusion.bottleneck import BottleneckFusion
from fusionzoo.fusion.cross_attention import CrossAttentionFusion
from fusionzoo.fusion.transformer import TransformerFusion
from fusionzoo.layers.masking import mask_of, masked_mean

__all__ = ["attention_readings", "cls_attention", "latent_attention", "stream_attention"]

Masks = dict[str, Tensor] | None


def attention_readings(fusion: torch.nn.Module, features: dict[str, Tensor], present: Masks) -> dict[str, Tensor]:
    """``{name: [b]}`` float readings of ``fusion``'s attention (module docstring); ``{}`` without one."""
    if isinstance(fusion, AttentionFusion):
        weights = fusion.attention_weights(features, present).float()
        return {m: weights[:, i] for i, m in enumerate(fusion.modalities)}
    if isinstance(fusion, TransformerFusion):
        return cls_attention(fusion, features, present)
    if isinstance(fusion, BottleneckFusion):
        return latent_attention(fusion, features, present)
    if isinstance(fusion, CrossAttentionFusion):
        return stream_attention(fusion, features, present)
    return {}


def cls_attention(fusion: TransformerFusion, features: dict[str, Tensor], present: Masks) -> dict[str, Tensor]:
    """``transformer``: the last layer's attention from the CLS token to each modality's tokens."""
    x, mask = fusion.tokens(features, present)
    for block in fusion.blocks[:-1]:
        x = block(x, mask)
    last = fusion.blocks[-1]
    probs = last.attn.probs(last.norm1(x), mask=mask).mean(1)[:, 0]  # [b, s]: the CLS query, mean over heads
    return _per_modality(probs[:, 1:], features, fusion.tokens.modalities)


def latent_attention(fusion: BottleneckFusion, features: dict[str, Tensor], present: Masks) -> dict[str, Tensor]:
    """``bottleneck``: the last cross-attention layer's attention from the latents to each modality's tokens."""
    context, mask = fusion.tokens(features, present)
    z = fusion.latents.expand(context.shape[0], -1, -1)
    for cross, mix in zip(fusion.cross[:-1], fusion.mix[:-1]):
        z = mix(cross(z, context, mask))
    last = fusion.cross[-1]
    probs = last.attn.probs(last.norm_q(z), last.norm_kv(context), mask).mean((1, 2))  # [b, s]: heads, latents
    return _per_modality(probs[:, 1:], features, fusion.tokens.modalities)


def stream_attention(fusion: CrossAttentionFusion, features: dict[str, Tensor], present: Masks) -> dict[str, Tensor]:
    """``cross_attention``: per stream ``t<-s``, the last block's attention from ``t``'s tokens to ``s``'s."""
    queries, context, context_mask, masks = fusion.streams(features, present)
    for block in fusion.blocks[:-1]:
        queries = block(queries, context, context_mask)
    to_source = fusion.blocks[-1].probs(queries, context, context_mask).mean(2)[..., 1:].sum(-1)  # [g, b, n]
    readings = {}
    for i, (t, s) in enumerate(fusion.pairs):
        share = masked_mean(to_source[i].unsqueeze(-1), mask_of(masks, t), dim=1).squeeze(-1)  # 0 for a missing t
        readings[f"{t}<-{s}"] = share.float()
    return readings


def _per_modality(probs: Tensor, features: dict[str, Tensor], modalities: tuple[str, ...]) -> dict[str, Tensor]:
    """Sum ``probs [b, sum n_m]`` (the modalities' tokens in ``modalities`` order) over each modality's tokens."""
    parts = probs.split([features[m].shape[1] for m in modalities], dim=1)
    return {m: part.sum(-1).float() for m, part in zip(modalities, parts)}
