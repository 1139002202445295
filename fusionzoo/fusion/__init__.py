"""Fusion blocks, one file per family; importing this package registers them in ``FUSIONS``."""

from fusionzoo.fusion import (
    attention,
    bilinear,
    bottleneck,
    concat,
    cross_attention,
    deepset,
    gating,
    late,
    multiplicative,
    tensor,
    transformer,
)
from fusionzoo.fusion.attention import AttentionFusion
from fusionzoo.fusion.base import (
    DEFAULT_DIMS,
    FusionBlock,
    example_features,
    example_present,
)
from fusionzoo.fusion.bilinear import BilinearFusion
from fusionzoo.fusion.bottleneck import BottleneckFusion
from fusionzoo.fusion.concat import ConcatMLPFusion
from fusionzoo.fusion.cross_attention import CrossAttentionFusion
from fusionzoo.fusion.deepset import DeepSetFusion
from fusionzoo.fusion.dropout import ModalityDropout
from fusionzoo.fusion.gating import FiLMFusion, GatedMultimodalUnit
from fusionzoo.fusion.late import WeightedLateFusion
from fusionzoo.fusion.multiplicative import MultiplicativeFusion
from fusionzoo.fusion.tensor import LowRankFusion, TensorFusion
from fusionzoo.fusion.transformer import TransformerFusion

__all__ = [
    "DEFAULT_DIMS",
    "AttentionFusion",
    "BilinearFusion",
    "BottleneckFusion",
    "ConcatMLPFusion",
    "CrossAttentionFusion",
    "DeepSetFusion",
    "FiLMFusion",
    "FusionBlock",
    "GatedMultimodalUnit",
    "LowRankFusion",
    "ModalityDropout",
    "MultiplicativeFusion",
    "TensorFusion",
    "TransformerFusion",
    "WeightedLateFusion",
    "example_features",
    "example_present",
    "attention",
    "bilinear",
    "bottleneck",
    "concat",
    "cross_attention",
    "deepset",
    "gating",
    "late",
    "multiplicative",
    "tensor",
    "transformer",
]
