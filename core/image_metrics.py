"""Image metrics for `priorswap eval --data`, and bootstrap confidence intervals.

Images are float tensors (B, 3, H, W) in [0, 1]. Paired metrics (PSNR, SSIM, LPIPS) compare an
output with its target; the CLIP metrics compare embeddings of images and texts; the Fréchet
distances (FID, FD in CLIP space) compare two sets. Metrics that need weights or extra packages
are built through a loader that raises `MetricUnavailable(reason)` instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MetricUnavailable, PriorswapError

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
PSNR_CAP = 100.0  # dB: identical images would give +inf
LPIPS_MIN_SIZE = 64  # AlexNet's pooling needs about 32 pixels; smaller images are upsampled to this


@dataclass(frozen=True)
class MetricInfo:
    """What a metric measures, whether higher is better, and what it needs beyond the outputs."""

    name: str
    higher_is_better: bool
    needs: str
    description: str


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("psnr", True, "target", "peak signal-to-noise ratio vs the target, dB (capped at 100)"),
        MetricInfo("ssim", True, "target", "structural similarity vs the target"),
        MetricInfo("lpips", False, "target", "LPIPS (AlexNet) distance to the target"),
        MetricInfo("clip-image", True, "image", "cosine of CLIP image embeddings, output vs input image"),
        MetricInfo("clip-image-target", True, "target", "cosine of CLIP image embeddings, output vs target"),
        MetricInfo("clip-text", True, "text", "cosine of CLIP embeddings, output image vs caption_out or prompt"),
        MetricInfo("clip-direction", True, "captions",
                   "cosine of (E_img(out) − E_img(in)) and (E_txt(caption_out) − E_txt(caption_in))"),
        MetricInfo("fid", False, "reference set", "Fréchet Inception distance to the reference images"),
        MetricInfo("fd-clip", False, "reference set", "Fréchet distance in CLIP image space to the reference images"),
    )
}
CLIP_METRICS = ("clip-image", "clip-image-target", "clip-text", "clip-direction", "fd-clip")
SET_METRICS = ("fid", "fd-clip")


def check_metric_names(names: Sequence[str], owner: str) -> None:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise PriorswapError(f"{owner} declares unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")


# ---- statistics ------------------------------------------------------------------------------------


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n: int = 500,
    seed: int = 0,
    recentre: bool = False,
) -> tuple[float, float, float]:
    """(statistic, 2.5 %, 97.5 %): the rows of `values` resampled with replacement `n` times.

    `recentre` shifts the bootstrap distribution so that its median is the point estimate: for a
    Fréchet distance, resampling duplicates rows and inflates the value, so the plain percentile
    interval would sit above the estimate.
    """
    rng = np.random.default_rng(seed)
    values = np.asarray(values)
    point = float(statistic(values))
    stats = np.array([statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(n)])
    low, mid, high = np.percentile(stats, [2.5, 50, 97.5])
    if recentre:
        low, high = point + (low - mid), point + (high - mid)
    return point, float(low), float(high)


def _rows(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    f = f[:, None] if f.ndim == 1 else f  # n scalar samples
    if len(f) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 samples per set, got {len(f)}")
    return f


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, covariance, symmetric square root of the covariance) of a feature set (rows = samples)."""
    f = _rows(features)
    cov = np.atleast_2d(np.cov(f, rowvar=False))
    w, v = np.linalg.eigh(cov)
    return f.mean(axis=0), cov, (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    """‖μa − μb‖² + tr Σa + tr Σb − 2 tr (Σa Σb)^½ between Gaussian fits of two feature sets; `b` may be
    a `gaussian_fit` (fit the reference once when it is compared many times, as in a bootstrap).

    tr (Σa Σb)^½ is Σ √λ over the eigenvalues of Σa Σb. With n rows of dimension d, Σa = Xaᵀ Xa / (n − 1)
    (Xa the centred rows), and Σa Σb has the same non-zero eigenvalues as the n × n matrix
    Xa Σb Xaᵀ / (n − 1); when n < d (FID's 2048-d features of a few hundred images) that is the one
    decomposed. Otherwise it is the d × d symmetric Σb^½ Σa Σb^½.
    """
    f = _rows(a)
    mu_a = f.mean(axis=0)
    centred = f - mu_a
    mu_b, cov_b, root_b = b if isinstance(b, tuple) else gaussian_fit(b)
    trace_a = float((centred**2).sum()) / (len(f) - 1)
    if len(f) < f.shape[1]:
        inner = centred @ cov_b @ centred.T / (len(f) - 1)
        eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    else:
        eig = np.linalg.eigvalsh(root_b @ (centred.T @ centred / (len(f) - 1)) @ root_b)
    cross = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    distance = float(((mu_a - mu_b) ** 2).sum() + trace_a + np.trace(cov_b) - 2.0 * cross)
    return max(distance, 0.0)  # rounding can leave identical sets slightly below 0


# ---- paired pixel metrics -----------------------------------------------------------------------------


def _pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"output {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return pred.float().clamp(0, 1), target.float().clamp(0, 1).to(pred.device)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """PSNR (dB) of each image pair, capped at PSNR_CAP for identical images."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, t = _pair(pred, target)
    values = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return np.minimum(values.double().cpu().numpy().reshape(-1), PSNR_CAP)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """SSIM of each image pair (Gaussian window σ = 1.5, 11×11, smaller for images under 11 pixels)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, t = _pair(pred, target)
    size = min(11, min(p.shape[-2:]))
    size -= 1 - size % 2  # odd
    values = structural_similarity_index_measure(p, t, data_range=1.0, kernel_size=size, reduction="none")
    return values.double().cpu().numpy().reshape(-1)


class Lpips:
    """LPIPS v0.1 with the AlexNet backbone (`lpips_alexnet`; torchvision's ImageNet weights, read once with
    --allow-pickle). Images smaller than LPIPS_MIN_SIZE are upsampled first."""

    def __init__(self, device: str = "cpu", offline: bool = False, allow_pickle: bool = False) -> None:
        from .lpips_alexnet import LpipsAlex

        self.net = LpipsAlex.pretrained(offline=offline, allow_pickle=allow_pickle, device=device)
        self.device = device

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        p, t = _pair(pred.to(self.device), target)
        short = min(p.shape[-2:])
        if short < LPIPS_MIN_SIZE:
            size = tuple(round(s * LPIPS_MIN_SIZE / short) for s in p.shape[-2:])
            p, t = (F.interpolate(x, size, mode="bilinear", align_corners=False).clamp(0, 1) for x in (p, t))
        return self.net(p, t).cpu().double().numpy().reshape(-1)  # float64 on the host: MPS has none


# ---- Inception features for FID -------------------------------------------------------------------------


class InceptionFeatures:
    """2048-d pool features of the FID Inception network (`fid_inception`; weights read once with
    --allow-pickle). Images in [0, 1] are rounded to 8 bits first, as when saved to PNG (torchmetrics'
    `normalize=True` truncates instead)."""

    def __init__(self, device: str = "cpu", offline: bool = False, allow_pickle: bool = False) -> None:
        from .fid_inception import FidInception

        self.net = FidInception.pretrained(offline=offline, allow_pickle=allow_pickle, device=device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        pixels = (images.float().clamp(0, 1) * 255).round().to(self.device)
        return self.net(pixels).cpu().double().numpy().reshape(len(images), -1)


# ---- CLIP -------------------------------------------------------------------------------------------------


def cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine similarity (0 where a row is zero)."""
    return F.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-12).cpu().numpy().reshape(-1)


def clip_direction(out_image: torch.Tensor, in_image: torch.Tensor, out_text: torch.Tensor,
                   in_text: torch.Tensor) -> np.ndarray:
    """Directional similarity: cosine of the image edit direction and the caption edit direction
    (embeddings L2-normalised first), row by row."""
    unit = lambda x: F.normalize(x.double(), dim=-1)  # noqa: E731
    return cosine(unit(out_image) - unit(in_image), unit(out_text) - unit(in_text))


def _clip_folder(ref: str, offline: bool, allow_pickle: bool) -> Path:
    """A local folder with the CLIP model `ref` (a folder, or a hub id with an optional @revision)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    repo, _, revision = ref.partition("@")
    patterns = ["*.json", "*.txt", "*.safetensors"] + (["*.bin"] if allow_pickle else [])
    where = f"{repo}" + (f" --revision {revision}" if revision else "")
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=patterns,
                                      local_files_only=True))
    except Exception as e:
        if offline:
            raise MetricUnavailable(
                f"the CLIP weights {repo} are not in the Hugging Face cache and offline mode is on: on a machine "
                f"with internet run `hf download {where}` (then copy the cache, see HF_HOME), or pass --clip with "
                "a local CLIPModel folder"
            ) from e
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=patterns))
    except Exception as e:
        raise MetricUnavailable(
            f"the CLIP weights {repo} could not be downloaded ({type(e).__name__}: {e}); run `hf download {where}`, "
            "or pass --clip with a local CLIPModel folder"
        ) from None


class Clip:
    """A transformers CLIPModel and its processor: L2-normalised image and text embeddings."""

    def __init__(self, model: Any, processor: Any, name: str, device: str = "cpu") -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.processor = processor
        self.name = name
        self.device = device

    @classmethod
    def load(cls, ref: str = DEFAULT_CLIP, device: str = "cpu", offline: bool = False,
             allow_pickle: bool = False) -> Clip:
        """Offline first: the cache (or a local folder), then the hub unless offline. Raises
        MetricUnavailable when the weights cannot be had, PriorswapError for a broken local folder."""
        folder = _clip_folder(ref, offline, allow_pickle)
        if not any(folder.glob("*.safetensors")) and not allow_pickle:
            raise MetricUnavailable(
                f"the CLIP folder {folder} holds no .safetensors weights; pass --allow-pickle to load .bin weights"
            )
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(folder, use_safetensors=None if allow_pickle else True)
            processor = CLIPProcessor.from_pretrained(folder)
        except Exception as e:
            raise PriorswapError(
                f"--clip {ref}: {folder} is not a CLIPModel folder with its processor ({type(e).__name__}: {e})"
            ) from None
        return cls(model, processor, ref, device)

    @torch.no_grad()
    def images(self, images: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        """(N, D) unit embeddings of images: a (N, 3, H, W) tensor in [0, 1] or a list of PIL images."""
        if isinstance(images, torch.Tensor):
            from .media import to_pil

            images = [to_pil(img) for img in images]
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        vision = self.model.vision_model(pixel_values=pixels.to(self.device, self.model.dtype))
        return F.normalize(self.model.visual_projection(vision.pooler_output).float(), dim=-1).cpu()

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) unit embeddings of texts."""
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        text = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                     attention_mask=tokens["attention_mask"].to(self.device))
        return F.normalize(self.model.text_projection(text.pooler_output).float(), dim=-1).cpu()
