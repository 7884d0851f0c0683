"""The Inception-v3 network that FID is defined with (TensorFlow's 2015-12-05 graph), in plain torch.

Same layout and weights file as torch-fidelity (which torchmetrics' FID uses), so scores are comparable
with published ones: images are resized to 299×299 with TensorFlow 1's bilinear rule, scaled by
(x − 128) / 128, and the 2048-d average-pooled features are returned. Tested against torch-fidelity.
The TensorFlow graph differs from torchvision's Inception in its pooling: average pools do not count
padding, and the last block max-pools.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .metric_weights import MetricWeights, check_loaded, load_metric_weights

INCEPTION = MetricWeights(
    "the FID Inception network (TensorFlow's 2015-12-05 weights, as converted by torch-fidelity)",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)
SIZE = 299


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1 did it (align_corners=False, no half-pixel centres): output pixel i
    samples the input at i · in/out, clamping the upper neighbour at the edge."""
    for dim, n_out in ((-1, size[1]), (-2, size[0])):
        n_in = x.shape[dim]
        pos = torch.arange(n_out, dtype=torch.float32, device=x.device) * torch.tensor(n_in / n_out,
                                                                                       dtype=torch.float32)
        lo = pos.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        frac = (pos - lo.float()).to(x.dtype)
        shape = [1] * x.dim()
        shape[dim] = n_out
        a, b = x.index_select(dim, lo), x.index_select(dim, hi)
        x = a + (b - a) * frac.view(shape)
    return x


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (ε = 0.001), ReLU: `conv.*` and `bn.*` in the weights."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _run(block: nn.Module, x: torch.Tensor, *names: str) -> torch.Tensor:
    for name in names:
        x = getattr(block, name)(x)
    return x


def _avg3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class Mixed35(nn.Module):
    """35×35 block: 1×1, 5×5, double 3×3 and pooled branches."""

    def __init__(self, cin: int, pool: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _run(self, x, "branch5x5_1", "branch5x5_2"),
            _run(self, x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
            self.branch_pool(_avg3(x)),
        ], 1)


class Reduce35(nn.Module):
    """35 → 17 reduction."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            _run(self, x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class Mixed17(nn.Module):
    """17×17 block with factorised 7×7 convolutions of width `c7`."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2, self.branch7x7_3 = ConvBN(c7, c7, **row), ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = ConvBN(c7, c7, **col), ConvBN(c7, c7, **row)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = ConvBN(c7, c7, **col), ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _run(self, x, "branch7x7_1", "branch7x7_2", "branch7x7_3"),
            _run(self, x, *(f"branch7x7dbl_{i}" for i in range(1, 6))),
            self.branch_pool(_avg3(x)),
        ], 1)


class Reduce17(nn.Module):
    """17 → 8 reduction."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            _run(self, x, "branch3x3_1", "branch3x3_2"),
            _run(self, x, *(f"branch7x7x3_{i}" for i in range(1, 5))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class Mixed8(nn.Module):
    """8×8 block with split 1×3 / 3×1 outputs; the pooled branch averages (first block) or max-pools (last)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = ConvBN(cin, 448, 1), ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = _run(self, x, "branch3x3dbl_1", "branch3x3dbl_2")
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], 1)


class FidInception(nn.Module):
    """(B, 3, H, W) images with values 0–255 (uint8 or float) → (B, 2048) FID features."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = Mixed35(192, 32), Mixed35(256, 64), Mixed35(288, 64)
        self.Mixed_6a = Reduce35(288)
        self.Mixed_6b, self.Mixed_6c = Mixed17(768, 128), Mixed17(768, 160)
        self.Mixed_6d, self.Mixed_6e = Mixed17(768, 160), Mixed17(768, 192)
        self.Mixed_7a = Reduce17(768)
        self.Mixed_7b, self.Mixed_7c = Mixed8(1280, max_pool=False), Mixed8(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # the classifier: in the weights file, unused for FID
        self.requires_grad_(False)

    @classmethod
    def pretrained(cls, *, offline: bool, allow_pickle: bool, device: str = "cpu") -> FidInception:
        """The network with its published weights (raises MetricUnavailable when they cannot be had)."""
        state = load_metric_weights(INCEPTION, offline=offline, allow_pickle=allow_pickle)
        net = cls()
        check_loaded(INCEPTION.what, lambda: net.load_state_dict(state), INCEPTION.filename)
        return net.to(device).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_bilinear_tf1(images.float(), (SIZE, SIZE))
        x = (x - 128) / 128
        x = _run(self, x, "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3")
        x = F.max_pool2d(x, 3, stride=2)
        x = _run(self, x, "Conv2d_3b_1x1", "Conv2d_4a_3x3")
        x = F.max_pool2d(x, 3, stride=2)
        x = _run(self, x, "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
        return x.mean(dim=(2, 3))
