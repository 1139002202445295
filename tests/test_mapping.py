"""PCA, LDA and CCA against brute-force eigen solutions and closed forms on constructed data."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from fusionzoo.mapping import CCA, LDA, PCA


def data(n=400, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64) + 3.0


def test_pca_matches_the_covariance_eigenvectors_and_energy():
    x = data()
    pca = PCA(n_components=3).fit(x)
    values, vectors = torch.linalg.eigh(torch.cov(x.T))
    order = values.argsort(descending=True)[:3]
    torch.testing.assert_close(pca.explained_variance, values[order])
    for i in range(3):  # the same directions up to sign
        assert abs(float(pca.components[i] @ vectors[:, order[i]])) == pytest.approx(1.0, abs=1e-8)
    z = pca(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    full = PCA(energy=1.0).fit(x)
    torch.testing.assert_close(full.inverse_transform(full(x)), x)  # all components: lossless
    assert PCA(energy=0.5).fit(x).components.shape[0] == int((values.flip(0).cumsum(0) / values.sum() < 0.5).sum()) + 1


def test_lda_solves_the_generalised_eigenproblem_and_the_two_class_closed_form():
    g = torch.Generator().manual_seed(1)
    means = torch.tensor([[0.0, 0, 0, 0], [3, 1, 0, 0], [0, 3, 1, 0]], dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(200)
    mix = torch.randn(4, 4, generator=g, dtype=torch.float64)
    x = means[labels] + torch.randn(600, 4, generator=g, dtype=torch.float64) @ mix
    lda = LDA(reg=0.0).fit(x, labels)
    assert lda.components.shape == (4, 2)
    mu = x.mean(0)
    sw = sum((x[labels == c] - x[labels == c].mean(0)).T @ (x[labels == c] - x[labels == c].mean(0)) for c in range(3)) / 600
    sb = sum((labels == c).sum() * torch.outer(x[labels == c].mean(0) - mu, x[labels == c].mean(0) - mu) for c in range(3)) / 600
    for j in range(2):
        w = lda.components[:, j]
        torch.testing.assert_close(sb @ w, lda.ratios[j] * (sw @ w), atol=1e-9, rtol=1e-7)
    assert (lda.predict(x) == labels).double().mean() > 0.9
    two = labels < 2
    lda2 = LDA(reg=0.0).fit(x[two], labels[two])
    sw2 = sum((x[labels == c] - x[labels == c].mean(0)).T @ (x[labels == c] - x[labels == c].mean(0)) for c in range(2))
    fisher = torch.linalg.solve(sw2, x[labels == 1].mean(0) - x[labels == 0].mean(0))
    cosine = float(lda2.components[:, 0] @ fisher) / float(lda2.components[:, 0].norm() * fisher.norm())
    assert abs(cosine) == pytest.approx(1.0, abs=1e-8)
    with pytest.raises(ValueError, match="at least two classes"):
        LDA().fit(x[:5], torch.zeros(5))


def test_cca_finds_the_shared_latent_and_its_variates_are_uncorrelated():
    g = torch.Generator().manual_seed(2)
    n = 2000
    shared = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = torch.cat([shared, torch.randn(n, 3, generator=g, dtype=torch.float64)], 1) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = torch.cat([shared[:, :1], 0.5 * shared[:, 1:] + noise[:, :1], noise[:, 1:]], 1) @ torch.randn(3, 3, generator=g, dtype=torch.float64)
    cca = CCA(n_components=2, reg_x=0.0, reg_y=0.0).fit(x, y)
    zx, zy = cca(x, y)
    corr = torch.corrcoef(torch.cat([zx, zy], 1).T)
    assert cca.correlations[0] == pytest.approx(1.0, abs=1e-9)  # the first latent is in both views exactly
    assert cca.correlations[1] == pytest.approx(corr[1, 3].item(), abs=1e-9)
    sample = torch.corrcoef(torch.stack([shared[:, 1], 0.5 * shared[:, 1] + noise[:, 0]]))[0, 1]
    assert cca.correlations[1] == pytest.approx(sample.item(), abs=0.01)  # the second latent, as sampled
    assert abs(corr[0, 1]) < 1e-8 and abs(corr[0, 3]) < 1e-8  # variates uncorrelated across components
    for _ in range(200):  # no direction pair correlates more than the first canonical pair
        a, b = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
        assert torch.corrcoef(torch.stack([x @ a, y @ b]))[0, 1].abs() <= cca.correlations[0] + 1e-9


def test_mappings_save_and_load_their_state(tmp_path):
    x = data()
    labels = (x[:, 0] > x[:, 0].median()).long()
    for fitted, fresh, args in [
        (PCA(n_components=2).fit(x), PCA(n_components=2), (x,)),
        (LDA().fit(x, labels), LDA(), (x,)),
        (CCA(n_components=2).fit(x[:, :3], x[:, 3:]), CCA(n_components=2), (x[:, :3], x[:, 3:])),
    ]:
        save_file({k: v.contiguous() for k, v in fitted.state_dict().items()}, str(tmp_path / "m.safetensors"))
        fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
        a, b = fitted(*args), fresh(*args)
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            torch.testing.assert_close(u, v)
    with pytest.raises(RuntimeError, match="call fit"):
        PCA(n_components=1)(x)
    with pytest.raises(ValueError, match=r"expected 6 features, got 3"):
        PCA(n_components=1).fit(x)(x[:, :3])
