"""Input checks shared by every encoder and fusion block.

Each raises ``TypeError`` (wrong type / dtype) or ``ValueError`` (wrong rank / size) with a message
that names the modality, the expected and the received shape or dtype. Checks read only shapes and
dtypes, never values, so they cost nothing and trace cleanly under ``torch.compile``/``torch.export``;
the one exception, :func:`check_range` (integer lengths and token ids), reads values without a host
sync on CUDA and is skipped while compiling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NoReturn

import torch
from torch import Tensor

__all__ = ["check_tensor", "check_dims", "check_positive_int", "check_range", "format_shape"]

_DTYPE_KINDS = {
    "float": lambda d: d.is_floating_point,
    "int": lambda d: not d.is_floating_point and not d.is_complex and d != torch.bool,
    "bool": lambda d: d == torch.bool,
}


def format_shape(shape: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_tensor(
    x: object,
    *,
    name: str,
    shape: Sequence[int | str],
    dtype: str | torch.dtype = "float",
    what: str = "input",
) -> Tensor:
    """Check that ``x`` is a tensor of the given shape pattern and dtype kind.

    ``shape`` holds ints (that size exactly) and letters (any size, named in the message), e.g.
    ``("B", 512)``. ``dtype`` is a ``torch.dtype`` or one of ``"float"``, ``"int"``, ``"bool"``.
    A leading batch dimension must be non-empty.
    """
    # This runs on every forward call: the passing case is a few comparisons, the messages are
    # built only on failure.
    if isinstance(x, Tensor) and (x.dtype == dtype if isinstance(dtype, torch.dtype) else _DTYPE_KINDS[dtype](x.dtype)):
        size = x.shape
        if len(size) == len(shape) and (not size or size[0] != 0):
            for s, n in zip(shape, size):
                if isinstance(s, int) and s != n:
                    break
            else:
                return x
    _raise_check_tensor(x, name, shape, dtype, what)


def _raise_check_tensor(x: object, name: str, shape: Sequence[int | str], dtype: str | torch.dtype, what: str) -> NoReturn:
    expected = f"{dtype if isinstance(dtype, str) else str(dtype).removeprefix('torch.')} tensor of shape {format_shape(shape)}"
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected {what} to be a {expected}, got {type(x).__name__}")
    got = f"{str(x.dtype).removeprefix('torch.')} tensor of shape {format_shape(tuple(x.shape))}"
    ok_dtype = x.dtype == dtype if isinstance(dtype, torch.dtype) else _DTYPE_KINDS[dtype](x.dtype)
    if not ok_dtype:
        raise TypeError(f"{name}: expected {what} to be a {expected}, got {got}")
    if x.dim() != len(shape) or any(isinstance(s, int) and s != n for s, n in zip(shape, x.shape)):
        raise ValueError(f"{name}: expected {what} to be a {expected}, got {got}")
    raise ValueError(f"{name}: expected a non-empty batch, got {got}")


def check_dims(in_dims: object, *, where: str) -> dict[str, int]:
    """Validate a ``{modality: width}`` mapping and return it sorted by modality name."""
    if not isinstance(in_dims, Mapping):
        raise TypeError(f"{where}: in_dims must be a mapping {{modality: int}}, got {type(in_dims).__name__}")
    if len(in_dims) == 0:
        raise ValueError(f"{where}: in_dims is empty; give at least one modality and its feature width")
    out: dict[str, int] = {}
    for m in sorted(in_dims):
        d = in_dims[m]
        if not isinstance(m, str) or not m or "." in m:
            raise TypeError(f"{where}: modality names must be non-empty str without '.', got {m!r}")
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"{where}: in_dims[{m!r}] must be an int, got {type(d).__name__} {d!r}")
        if d <= 0:
            raise ValueError(f"{where}: in_dims[{m!r}] must be positive, got {d}")
        out[m] = d
    return out


def check_positive_int(value: object, *, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{where}: {name} must be positive, got {value}")
    return value


def check_range(values: Tensor, low: int, high: int, *, what: str, expected: str) -> None:
    """Every element of an integer tensor is in ``[low, high]``, else ``ValueError``: ``"{what} must
    be in {expected}, got values from a to b"``. On the CPU one min/max pass; on CUDA an asynchronous
    device assert (no host sync on the training path); skipped while ``torch.compile`` traces."""
    if values.numel() == 0 or torch.compiler.is_compiling():
        return
    if values.is_cuda:
        torch._assert_async(((values >= low) & (values <= high)).all(), f"{what} must be in {expected}")
        return
    found_low, found_high = (int(v) for v in torch.aminmax(values))
    if found_low < low or found_high > high:
        raise ValueError(f"{what} must be in {expected}, got values from {found_low} to {found_high}")
