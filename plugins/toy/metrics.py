"""Metrics of the toy zoo: Fréchet distance in the classifier's feature space, accuracy, PSNR/SSIM,
and bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(μ, Σ, Σ^½) of a feature set; Σ^½ by a symmetric eigendecomposition."""
    f = np.asarray(features, dtype=np.float64)
    cov = np.atleast_2d(np.cov(f, rowvar=False))
    w, v = np.linalg.eigh(cov)
    return f.mean(axis=0), cov, (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2·(Σa Σb)^½) between Gaussian fits of two feature sets (`b` may be
    precomputed by `gaussian`). tr (Σa Σb)^½ = Σ √λ(Σb^½ Σa Σb^½): a symmetric eigenproblem, much
    faster and stabler than a general matrix square root."""
    f = np.asarray(a, dtype=np.float64)
    if len(f) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 samples, got {len(f)}")
    mu_a, cov_a = f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))
    mu_b, cov_b, sqrt_b = b if isinstance(b, tuple) else gaussian(b)
    eig = np.linalg.eigvalsh(sqrt_b @ cov_a @ sqrt_b)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixels → [0, 1]."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def psnr_per_sample(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """PSNR (dB) of each image, inputs in [-1, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, t = to_unit(pred), to_unit(target)
    return np.array([
        float(peak_signal_noise_ratio(p[i : i + 1], t[i : i + 1], data_range=1.0)) for i in range(len(p))
    ])


def ssim_per_sample(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """SSIM of each image (torchmetrics, 7×7 Gaussian window for 16×16 digits), inputs in [-1, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    out = structural_similarity_index_measure(
        to_unit(pred), to_unit(target), data_range=1.0, kernel_size=7, reduction="none"
    )
    return out.double().numpy()


def bootstrap(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n: int = 500,
    seed: int = 0,
    recentre: bool = False,
) -> tuple[float, float, float]:
    """(statistic, 2.5 %, 97.5 %) with samples (rows of `values`) resampled with replacement.

    `recentre` shifts the bootstrap distribution so that its median is the point estimate: for
    the Fréchet distance, resampling with replacement duplicates samples and inflates the value,
    so the plain percentile interval would sit above the estimate.
    """
    rng = np.random.default_rng(seed)
    values = np.asarray(values)
    point = float(statistic(values))
    stats = np.array([statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(n)])
    low, mid, high = np.percentile(stats, [2.5, 50, 97.5])
    if recentre:
        low, high = point + (low - mid), point + (high - mid)
    return point, float(low), float(high)
