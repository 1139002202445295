"""Modality encoders; importing this package registers them in ``ENCODERS``."""

from fusionzoo.encoders import features
from fusionzoo.encoders.base import Encoder
from fusionzoo.encoders.features import FeatureMLPEncoder

__all__ = ["Encoder", "FeatureMLPEncoder", "features"]
