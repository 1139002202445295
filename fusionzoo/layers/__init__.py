"""Unregistered building blocks shared by encoders, fusion blocks and heads."""

from fusionzoo.layers.masking import (
    any_present,
    masked_max,
    masked_mean,
    masked_softmax,
    zero_missing,
)
from fusionzoo.layers.mlp import ACTIVATIONS, MLP, get_activation
from fusionzoo.layers.validation import (
    check_dims,
    check_positive_int,
    check_tensor,
    format_shape,
)

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "any_present",
    "check_dims",
    "check_positive_int",
    "check_tensor",
    "format_shape",
    "get_activation",
    "masked_max",
    "masked_mean",
    "masked_softmax",
    "zero_missing",
]
