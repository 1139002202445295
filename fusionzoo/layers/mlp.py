"""Multi-layer perceptron and activation lookup.

Legend: ``b`` batch, ``d`` features.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["MLP", "get_activation", "ACTIVATIONS"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def get_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """``Linear -> [LayerNorm] -> act -> [Dropout]`` per hidden width, then a final ``Linear``.

    An empty ``hidden_dims`` gives a single ``Linear``.

    Shapes: ``[..., in_dim] -> [..., out_dim]``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        *,
        activation: str = "gelu",
        norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        for h in hidden_dims:
            if isinstance(h, bool) or not isinstance(h, int) or h <= 0:
                raise ValueError(f"hidden_dims must hold positive ints, got {list(hidden_dims)}")
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden_dims:
            layers.append(nn.Linear(d, h))
            if norm:
                layers.append(nn.LayerNorm(h))
            layers.append(get_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim
