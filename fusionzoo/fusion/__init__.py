"""Fusion blocks; importing this package registers them in ``FUSIONS``."""

from fusionzoo.fusion import concat
from fusionzoo.fusion.base import FusionBlock, example_features, example_present
from fusionzoo.fusion.concat import ConcatMLPFusion

__all__ = ["ConcatMLPFusion", "FusionBlock", "example_features", "example_present"]
