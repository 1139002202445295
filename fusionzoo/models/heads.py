"""Prediction heads: the fused vector to logits (or any output width).

Legend: ``b`` batch, ``d`` features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fusionzoo.layers.mlp import MLP
from fusionzoo.layers.validation import check_positive_int, check_tensor
from fusionzoo.registry import HEADS

__all__ = ["IdentityHead", "LinearHead", "MLPHead"]


class _Head(nn.Module):
    in_dim: int
    out_dim: int

    def _check(self, x: Tensor) -> None:
        check_tensor(x, name=f"{type(self).__name__}", shape=("B", self.in_dim), what="fused features")

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.randn(batch_size, self.in_dim)


@HEADS.register("linear", example_kwargs={"in_dim": 16, "out_dim": 10})
class LinearHead(_Head):
    """Dropout then one ``Linear``.

    Shapes: ``[b, in_dim] -> [b, out_dim]``.
    """

    def __init__(self, *, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim = check_positive_int(in_dim, name="in_dim", where="LinearHead")
        self.out_dim = check_positive_int(out_dim, name="out_dim", where="LinearHead")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.fc(self.dropout(x))


@HEADS.register("mlp", example_kwargs={"in_dim": 16, "out_dim": 10, "hidden_dims": (32,)})
class MLPHead(_Head):
    """An :class:`~fusionzoo.layers.MLP` head.

    Shapes: ``[b, in_dim] -> [b, out_dim]``.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int] = (256,),
        activation: str = "gelu",
        norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_dim = check_positive_int(in_dim, name="in_dim", where="MLPHead")
        self.out_dim = check_positive_int(out_dim, name="out_dim", where="MLPHead")
        self.mlp = MLP(in_dim, list(hidden_dims), out_dim, activation=activation, norm=norm, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.mlp(x)


@HEADS.register("identity", example_kwargs={"in_dim": 16})
class IdentityHead(_Head):
    """No head: the fused vector is the output (for late fusion, whose blocks already produce logits).

    Shapes: ``[b, in_dim] -> [b, in_dim]``.
    """

    def __init__(self, *, in_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.in_dim = check_positive_int(in_dim, name="in_dim", where="IdentityHead")
        if out_dim is not None and out_dim != in_dim:
            raise ValueError(f"IdentityHead: out_dim {out_dim} must equal in_dim {in_dim} (the fusion block's out_dim)")
        self.out_dim = in_dim

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return x
