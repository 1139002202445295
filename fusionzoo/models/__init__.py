"""Heads and the composed multimodal model; importing this package registers the heads."""

from fusionzoo.models import heads
from fusionzoo.models.heads import IdentityHead, LinearHead, MLPHead
from fusionzoo.models.multimodal import MultimodalModel

__all__ = ["IdentityHead", "LinearHead", "MLPHead", "MultimodalModel", "heads"]
