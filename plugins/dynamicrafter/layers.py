"""Convolutional building blocks of the lvdm 3-D UNet (DynamiCrafter / VideoCrafter2).

Layout conventions: 2-D layers see frames folded into the batch, `(b t) c h w` (frame index fastest
within a batch element); temporal layers see `b c t h w`. Attribute names follow the official code so
that state_dict keys match the released checkpoints (including the `temopral_conv` spelling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (N,) → (N, dim): the cos half first, then the sin half (lvdm order).

    Timesteps may be fractional. An odd `dim` gets one zero column at the end.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def unfold_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """`(b t) c h w` → `b c t h w`."""
    bt, c, h, w = x.shape
    return x.reshape(batch, bt // batch, c, h, w).permute(0, 2, 1, 3, 4)


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """`b c t h w` → `(b t) c h w`."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def maybe_checkpoint(module: nn.Module, fn, *args: torch.Tensor) -> torch.Tensor:
    """Activation checkpointing while training with `use_checkpoint`; a plain call otherwise (same numbers)."""
    if getattr(module, "use_checkpoint", False) and module.training and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype (lvdm `normalization`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """GroupNorm(32 groups, eps 1e-5) in float32."""
    return GroupNorm32(32, channels)


class Downsample(nn.Module):
    """Halve H and W per frame: stride-2 conv3×3 (`op`), or 2×2 average pooling without `use_conv`."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("Downsample without a convolution cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W per frame (nearest), then an optional conv3×3 (`conv`)."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class TemporalConvBlock(nn.Module):
    """Four GroupNorm → SiLU → (Dropout) → Conv3d(3,1,1) stages over the frame axis, one residual around all.

    Input and output `b c t h w`. The last convolution starts at zero, so a fresh block is the identity.
    """

    def __init__(self, channels: int, dropout: float = 0.1):
        super().__init__()
        kernel, padding = (3, 1, 1), (1, 0, 0)
        self.conv1 = nn.Sequential(
            nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv3d(channels, channels, kernel, padding=padding)
        )
        for name in ("conv2", "conv3", "conv4"):
            stage = nn.Sequential(
                nn.GroupNorm(32, channels), nn.SiLU(), nn.Dropout(dropout),
                nn.Conv3d(channels, channels, kernel, padding=padding),
            )
            setattr(self, name, stage)
        nn.init.zeros_(self.conv4[-1].weight)
        nn.init.zeros_(self.conv4[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """Residual block with the timestep embedding added per channel, optionally followed by a temporal conv.

    GroupNorm → SiLU → conv3×3 → + Linear(SiLU(emb)) → GroupNorm → SiLU → Dropout → conv3×3, plus the skip
    (identity, or a 1×1 conv when the channel count changes). Input `(b t) c h w`, `emb` `(b t) E`.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_temporal_conv: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        if use_temporal_conv:
            self.temopral_conv = TemporalConvBlock(out_channels, dropout=0.1)
        else:
            self.temopral_conv = None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, batch: int) -> torch.Tensor:
        return maybe_checkpoint(self, lambda x_, e_: self._forward(x_, e_, batch), x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor, batch: int) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        if self.temopral_conv is not None:
            h = fold_frames(self.temopral_conv(unfold_frames(h, batch)))
        return h
