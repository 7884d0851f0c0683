"""Metrics of the toy zoo: Fréchet distance in the classifier's feature space, accuracy, PSNR/SSIM,
and bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
import torch

# the core's statistics, under the names the toy modules use
from priorswap.image_metrics import bootstrap_ci as bootstrap  # noqa: F401
from priorswap.image_metrics import frechet_distance  # noqa: F401
from priorswap.image_metrics import gaussian_fit as gaussian  # noqa: F401


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
