"""The image Resampler of DynamiCrafter (`image_proj_model`): a Perceiver that turns the CLIP image
encoder's tokens into `num_queries` context tokens per frame.

Attribute names follow the official code so that state_dict keys match the released checkpoints
(`latents`, `proj_in`, `proj_out`, `norm_out`, `layers.{i}.0.*` attention, `layers.{i}.1.{0,1,3}` FFN).
"""

from __future__ import annotations

import torch
from torch import nn


def resampler_feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm → Linear(dim, mult·dim, no bias) → GELU → Linear(mult·dim, dim, no bias)."""
    inner = dim * mult
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class PerceiverAttention(nn.Module):
    """Latents attend to [image features; latents]. q and k are each scaled by dim_head^-0.25 and the
    softmax runs in float32 (stable in half precision)."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.dim_head = dim_head
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """features (B, N, dim), latents (B, L, dim) → (B, L, dim) (the residual is added by the caller)."""
        features = self.norm1(features)
        latents = self.norm2(latents)
        b, length, _ = latents.shape
        q = self._heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)
        scale = self.dim_head**-0.25
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, length, -1)
        return self.to_out(out)


class Resampler(nn.Module):
    """CLIP image tokens (B, N, embedding_dim) → (B, num_queries·video_length, output_dim) context tokens.

    With `video_length` the learned queries are per frame, in frame-major order (frame i owns tokens
    i·num_queries … (i+1)·num_queries − 1). Constructor arguments are the official `image_proj_stage_config`
    parameter names.
    """

    def __init__(
        self,
        dim: int = 1024,
        depth: int = 8,
        dim_head: int = 64,
        heads: int = 16,
        num_queries: int = 8,
        embedding_dim: int = 768,
        output_dim: int = 1024,
        ff_mult: int = 4,
        video_length: int | None = None,
    ):
        super().__init__()
        self.num_queries = num_queries
        self.video_length = video_length
        total = num_queries * (video_length or 1)
        self.latents = nn.Parameter(torch.randn(1, total, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), resampler_feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(image_embeds)
        latents = self.latents.expand(image_embeds.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
