"""Classical subspace mappings: PCA, LDA and CCA, in torch linear algebra (float64).

Legend: ``n`` samples, ``d`` input features (``d_x``, ``d_y`` for two views), ``k`` components,
``c`` classes.

Each mapping is an ``nn.Module`` whose fitted statistics are buffers, so ``state_dict()``,
``load_state_dict()``, ``.to(device)`` and safetensors work as for any model part. ``fit`` returns
the mapping; ``forward`` (or ``transform``) projects. Use them on encoder features (``fusionzoo
embed``) to compare a learned shared space with the classical one.

* :class:`PCA`: the top-``k`` principal directions of centred data (SVD), or as many as carry
  ``energy`` of the variance.
* :class:`LDA`: multi-class Fisher discriminant: directions maximising between-class over
  within-class scatter, ``S_b w = lambda S_w w`` (``S_w`` shrunk by ``reg`` times its mean
  eigenvalue), at most ``c - 1``; ``predict`` assigns the nearest class mean in that space.
* :class:`CCA`: regularised canonical correlation of two views (``C_xx + reg_x I``, ``C_yy + reg_y
  I``); ``correlations`` holds the canonical correlations, ``forward(x, y)`` the canonical variates
  of each view (either may be ``None``). CCA is the standard baseline for cross-modal retrieval.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PCA", "LDA", "CCA"]


def _matrix(x: Tensor, name: str, width: int | None = None) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] == 0 or not x.is_floating_point():
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a float matrix [n, d] with n > 0, got {got}")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"{name}: expected {width} features, got {x.shape[1]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: the data holds non-finite values")
    return x.double()


def _inverse_sqrt(c: Tensor) -> Tensor:
    """``C^(-1/2)`` of a symmetric positive definite matrix."""
    values, vectors = torch.linalg.eigh(c)
    if values.min() <= 0:
        raise ValueError("the covariance is singular: raise the regularisation")
    return vectors @ torch.diag(values.rsqrt()) @ vectors.T


class _Mapping(nn.Module):
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # An unfitted mapping has empty buffers: take the shapes of the fitted one being loaded.
        for name, buffer in self._buffers.items():
            key = prefix + name
            if buffer is not None and key in state_dict and state_dict[key].shape != buffer.shape:
                self._buffers[name] = torch.empty(state_dict[key].shape, dtype=buffer.dtype, device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_fitted(self) -> None:
        if self.components.numel() == 0:
            raise RuntimeError(f"{type(self).__name__}: call fit() first")

    def transform(self, *args: Tensor) -> Tensor:
        return self(*args)


class PCA(_Mapping):
    """Principal component analysis: ``[n, d] -> [n, k]``."""

    def __init__(self, n_components: int | None = None, energy: float | None = None) -> None:
        super().__init__()
        if (n_components is None) == (energy is None):
            raise ValueError("PCA: give exactly one of n_components and energy")
        if energy is not None and not 0 < energy <= 1:
            raise ValueError(f"PCA: energy must be in (0, 1], got {energy}")
        self.n_components, self.energy = n_components, energy
        self.register_buffer("mean", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("components", torch.zeros(0, 0, dtype=torch.float64))  # [k, d]
        self.register_buffer("explained_variance", torch.zeros(0, dtype=torch.float64))

    def fit(self, x: Tensor) -> PCA:
        x = _matrix(x, "PCA.fit")
        mean = x.mean(0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        variance = s**2 / max(x.shape[0] - 1, 1)
        if self.energy is not None:
            share = variance.cumsum(0) / variance.sum()
            k = int((share < self.energy - 1e-12).sum()) + 1
        else:
            k = self.n_components
            if not 1 <= k <= vh.shape[0]:
                raise ValueError(f"PCA: n_components must be in [1, {vh.shape[0]}] for this data, got {k}")
        # A sign convention (largest |entry| positive) makes the result reproducible across solvers.
        signs = torch.sign(vh[:k].gather(1, vh[:k].abs().argmax(1, keepdim=True)))
        self.mean, self.components, self.explained_variance = mean, vh[:k] * signs, variance[:k]
        return self

    def forward(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return (_matrix(x, "PCA", self.mean.numel()) - self.mean) @ self.components.T

    def inverse_transform(self, z: Tensor) -> Tensor:
        self._check_fitted()
        return z.double() @ self.components + self.mean


class LDA(_Mapping):
    """Multi-class Fisher linear discriminant analysis: ``[n, d] -> [n, k]``, ``k <= c - 1``."""

    def __init__(self, n_components: int | None = None, reg: float = 1e-4) -> None:
        super().__init__()
        if reg < 0:
            raise ValueError(f"LDA: reg must be >= 0, got {reg}")
        self.n_components, self.reg = n_components, reg
        self.register_buffer("mean", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("components", torch.zeros(0, 0, dtype=torch.float64))  # [d, k]
        self.register_buffer("ratios", torch.zeros(0, dtype=torch.float64))  # between / within per direction
        self.register_buffer("class_means", torch.zeros(0, 0, dtype=torch.float64))  # [c, k], in the projection
        self.register_buffer("classes", torch.zeros(0, dtype=torch.long))

    def fit(self, x: Tensor, labels: Tensor) -> LDA:
        x = _matrix(x, "LDA.fit")
        labels = torch.as_tensor(labels).long()
        if labels.shape != (x.shape[0],):
            raise ValueError(f"LDA.fit: expected {x.shape[0]} labels, got shape {list(labels.shape)}")
        classes = labels.unique()
        if len(classes) < 2:
            raise ValueError("LDA.fit: needs at least two classes")
        k = self.n_components or len(classes) - 1
        if not 1 <= k <= min(len(classes) - 1, x.shape[1]):
            raise ValueError(f"LDA: n_components must be in [1, {min(len(classes) - 1, x.shape[1])}], got {k}")
        mean = x.mean(0)
        d = x.shape[1]
        within, between = torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
        for c in classes:
            xc = x[labels == c]
            mu = xc.mean(0)
            within += (xc - mu).T @ (xc - mu)
            between += len(xc) * torch.outer(mu - mean, mu - mean)
        within = within / x.shape[0] + self.reg * (within.trace() / (d * x.shape[0])).clamp(min=1e-12) * torch.eye(d, dtype=torch.float64)
        between = between / x.shape[0]
        white = _inverse_sqrt(within)
        values, vectors = torch.linalg.eigh(white @ between @ white)
        order = values.argsort(descending=True)[:k]
        w = white @ vectors[:, order]  # S_b w = lambda S_w w, w^T S_w w = 1
        self.mean, self.components, self.ratios, self.classes = mean, w, values[order], classes
        self.class_means = torch.stack([((x[labels == c] - mean) @ w).mean(0) for c in classes])
        return self

    def forward(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return (_matrix(x, "LDA", self.mean.numel()) - self.mean) @ self.components

    def predict(self, x: Tensor) -> Tensor:
        """The class whose mean is nearest in the discriminant space (equal priors)."""
        return self.classes[torch.cdist(self(x), self.class_means).argmin(1)]


class CCA(_Mapping):
    """Regularised canonical correlation analysis of two views: ``([n, d_x], [n, d_y]) -> ([n, k], [n, k])``."""

    def __init__(self, n_components: int, reg_x: float = 1e-4, reg_y: float = 1e-4) -> None:
        super().__init__()
        if n_components < 1 or reg_x < 0 or reg_y < 0:
            raise ValueError(f"CCA: need n_components >= 1 and reg >= 0, got {n_components}, {reg_x}, {reg_y}")
        self.n_components, self.reg_x, self.reg_y = n_components, reg_x, reg_y
        for name in ("mean_x", "mean_y", "correlations"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.float64))
        self.register_buffer("components", torch.zeros(0, 0, dtype=torch.float64))  # [d_x, k]
        self.register_buffer("components_y", torch.zeros(0, 0, dtype=torch.float64))  # [d_y, k]

    def fit(self, x: Tensor, y: Tensor) -> CCA:
        x, y = _matrix(x, "CCA.fit x"), _matrix(y, "CCA.fit y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"CCA.fit: the views must pair sample for sample, got {x.shape[0]} and {y.shape[0]} rows")
        k = self.n_components
        if k > min(x.shape[1], y.shape[1]):
            raise ValueError(f"CCA: n_components must be at most {min(x.shape[1], y.shape[1])}, got {k}")
        n = x.shape[0]
        mx, my = x.mean(0), y.mean(0)
        xc, yc = x - mx, y - my
        cxx = xc.T @ xc / (n - 1) + self.reg_x * torch.eye(x.shape[1], dtype=torch.float64)
        cyy = yc.T @ yc / (n - 1) + self.reg_y * torch.eye(y.shape[1], dtype=torch.float64)
        cxy = xc.T @ yc / (n - 1)
        wx, wy = _inverse_sqrt(cxx), _inverse_sqrt(cyy)
        u, s, vh = torch.linalg.svd(wx @ cxy @ wy)
        self.mean_x, self.mean_y = mx, my
        self.components, self.components_y = wx @ u[:, :k], wy @ vh[:k].T
        self.correlations = s[:k]
        return self

    def forward(self, x: Tensor | None = None, y: Tensor | None = None) -> Tensor | tuple[Tensor | None, Tensor | None]:
        self._check_fitted()
        zx = None if x is None else (_matrix(x, "CCA x", self.mean_x.numel()) - self.mean_x) @ self.components
        zy = None if y is None else (_matrix(y, "CCA y", self.mean_y.numel()) - self.mean_y) @ self.components_y
        return zx, zy
