"""Heads, the composed multimodal model and the alignment model; importing this package registers the heads."""

from fusionzoo.models import heads
from fusionzoo.models.alignment import AlignmentModel
from fusionzoo.models.heads import IdentityHead, LinearHead, MLPHead
from fusionzoo.models.multimodal import MultimodalModel

__all__ = ["AlignmentModel", "IdentityHead", "LinearHead", "MLPHead", "MultimodalModel", "heads"]
