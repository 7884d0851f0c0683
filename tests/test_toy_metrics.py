"""The evaluation metrics on inputs with known answers."""

import numpy as np
import pytest
import torch

from priorswap.plugins.toy.metrics import bootstrap, frechet_distance, psnr_per_sample, ssim_per_sample


def test_fd_of_a_set_with_itself_is_zero():
    a = np.random.default_rng(0).normal(size=(800, 12))
    assert abs(frechet_distance(a, a)) < 1e-8


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_fd_grows_with_a_known_shift(delta):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8))
    # for equal covariances FD is the squared mean distance: 8·δ² plus sampling noise
    assert frechet_distance(a, b + delta) == pytest.approx(8 * delta**2, rel=0.05, abs=0.05)
    assert frechet_distance(a, b + delta) > frechet_distance(a, b + delta / 2)


def test_fd_sees_a_covariance_change():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4000, 4)), 2 * rng.normal(size=(4000, 4))
    # tr(I + 4I − 2·2I) = 4 · 1 per dimension
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.1)


def test_bootstrap_interval_covers_the_mean_and_recentres_fd():
    values = np.random.default_rng(3).normal(5.0, 1.0, size=400)
    point, low, high = bootstrap(values)
    assert low < 5.0 < high and low < point < high and high - low < 0.5
    a, b = np.random.default_rng(4).normal(size=(300, 6)), np.random.default_rng(5).normal(size=(300, 6))
    point, low, high = bootstrap(a, lambda f: frechet_distance(f, b), n=60, recentre=True)
    assert low < point < high


def test_psnr_and_ssim_on_known_images():
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    assert np.isinf(psnr_per_sample(x, x)).all() or (psnr_per_sample(x, x) > 80).all()
    noisy = x + 0.1
    # a constant error of 0.1 in [-1, 1] is 0.05 in [0, 1]: PSNR = 10·log10(1 / 0.05²) ≈ 26.02 dB
    np.testing.assert_allclose(psnr_per_sample(noisy.clamp(-1, 1), x).mean(), 26.02, atol=1.0)
    np.testing.assert_allclose(ssim_per_sample(x, x), 1.0, atol=1e-6)
    assert (ssim_per_sample(-x, x) < 0.5).all()
