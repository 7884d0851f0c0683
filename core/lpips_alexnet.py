"""LPIPS (Zhang et al. 2018, version 0.1) with the AlexNet backbone, in plain torch (no torchvision).

The backbone has torchvision's `alexnet().features` layout, so its ImageNet weights load by name; the five
learned 1×1 heads are the LPIPS v0.1 ones that torchmetrics ships. Tested against the `lpips` package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MetricUnavailable
from .metric_weights import MetricWeights, check_loaded, load_metric_weights, load_packaged_weights

ALEXNET = MetricWeights(
    "LPIPS' AlexNet backbone (torchvision's ImageNet weights)",
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    sha256_prefix="7be5be79",
)
SHIFT = (-0.030, -0.088, -0.188)  # LPIPS' input scaling of images in [-1, 1]
SCALE = (0.458, 0.448, 0.450)
TAPS = (1, 4, 7, 9, 11)  # indices of the ReLUs in `features` whose activations are compared
WIDTHS = (64, 192, 384, 256, 256)  # their channels


HEADS_WHAT = "LPIPS' AlexNet heads (shipped with torchmetrics)"


def heads_file() -> Path:
    """torchmetrics' copy of the LPIPS v0.1 AlexNet heads, found without importing torchmetrics (which fails
    when torch-fidelity is installed without torchvision)."""
    spec = importlib.util.find_spec("torchmetrics")
    root = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if root is None:
        raise MetricUnavailable(f"{HEADS_WHAT}: torchmetrics is not installed; pip install torchmetrics")
    return root / "functional" / "image" / "lpips_models" / "alex.pth"


def alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional trunk, indexed as torchvision's (`features.0.weight` … `features.10.bias`)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LpipsAlex(nn.Module):
    """LPIPS distance of image pairs in [0, 1]: per tapped layer, the channel-normalised activations'
    squared difference, weighted by the layer's head, averaged over space; summed over layers."""

    def __init__(self) -> None:
        super().__init__()
        self.features = alexnet_features()
        self.heads = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1)) for c in WIDTHS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def load_weights(self, backbone: dict[str, torch.Tensor], heads: dict[str, torch.Tensor]) -> None:
        """backbone: a torchvision AlexNet state dict (its classifier is ignored); heads: LPIPS'
        `lin{k}.model.1.weight` tensors."""
        trunk = {k.removeprefix("features."): v for k, v in backbone.items() if k.startswith("features.")}
        self.features.load_state_dict(trunk)
        for k, head in enumerate(self.heads):
            head.copy_(heads[f"lin{k}.model.1.weight"])

    @classmethod
    def pretrained(cls, *, offline: bool, allow_pickle: bool, device: str = "cpu") -> LpipsAlex:
        """The network with its published weights (raises MetricUnavailable when they cannot be had)."""
        backbone = load_metric_weights(ALEXNET, offline=offline, allow_pickle=allow_pickle)
        heads = load_packaged_weights(heads_file(), HEADS_WHAT, allow_pickle=allow_pickle)
        net = cls()
        check_loaded(ALEXNET.what, lambda: net.load_weights(backbone, heads), f"{ALEXNET.filename} or the heads")
        return net.to(device).eval()

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B,) distances of two (B, 3, H, W) batches in [0, 1]."""
        x = torch.cat([a, b]).to(self.shift.dtype)
        x = (2 * x - 1 - self.shift) / self.scale
        total = torch.zeros(len(a), device=x.device, dtype=x.dtype)
        for feats, head in zip(self.taps(x), self.heads, strict=True):
            fa, fb = _unit_channels(feats).chunk(2)
            total += F.conv2d((fa - fb) ** 2, head).mean(dim=(1, 2, 3))
        return total
