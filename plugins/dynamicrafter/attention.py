"""Attention blocks of the lvdm 3-D UNet: spatial transformers (self + cross attention, optional image
branch) and temporal transformers (self-attention over the frame axis).

Attribute names follow the official code so that state_dict keys match the released checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import maybe_checkpoint

TEXT_CONTEXT_LEN = 77  # text tokens at the front of the context; the rest are image tokens


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.reshape(b, n, heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, heads, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * d)


class Attention(nn.Module):
    """Multi-head softmax attention, scale dim_head^-0.5, no bias on q/k/v.

    Without `context` it is self-attention. With `image_cross_attention` the context is split after
    `TEXT_CONTEXT_LEN` tokens: text tokens go through `to_k`/`to_v`, image tokens through
    `to_k_ip`/`to_v_ip`, both attended by the same queries with separate softmaxes, and
    `out = attn_text + image_scale · attn_image` (times `tanh(alpha) + 1` with a learnable `alpha`).
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        image_cross_attention: bool = False,
        image_scale_learnable: bool = False,
        image_scale: float = 1.0,
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.image_cross_attention = image_cross_attention
        self.image_scale = image_scale
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        if image_cross_attention:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
            if image_scale_learnable:
                self.alpha = nn.Parameter(torch.zeros(()))
        self.image_scale_learnable = image_cross_attention and image_scale_learnable

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.heads
        out = F.scaled_dot_product_attention(_split_heads(q, h), _split_heads(k, h), _split_heads(v, h), attn_mask=mask)
        return _merge_heads(out)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (N, L, query_dim); context (N, S, context_dim) or None; mask: boolean (L, S), True = attend."""
        q = self.to_q(x)
        if context is None:
            return self.to_out(self._attend(q, self.to_k(x), self.to_v(x), mask))
        if not self.image_cross_attention:
            return self.to_out(self._attend(q, self.to_k(context), self.to_v(context), mask))
        text, image = context[:, :TEXT_CONTEXT_LEN], context[:, TEXT_CONTEXT_LEN:]
        out = self._attend(q, self.to_k(text), self.to_v(text), mask)
        if image.shape[1] == 0:  # text only: the image branch contributes nothing (as in the official code)
            return self.to_out(out)
        out_ip = self._attend(q, self.to_k_ip(image), self.to_v_ip(image), mask)
        scale = self.image_scale * (torch.tanh(self.alpha) + 1) if self.image_scale_learnable else self.image_scale
        return self.to_out(out + scale * out_ip)


class GEGLU(nn.Module):
    """Linear to 2·dim_out; the first half times exact-GELU of the second half."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU(dim → 4·dim) → Dropout → Linear(4·dim → dim), as `net.0.proj` / `net.2`."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: x + attn1(norm1 x) (self), x + attn2(norm2 x, context), x + ff(norm3 x).

    With `context=None` attn2 is a second self-attention (the temporal transformers).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        image_cross_attention: bool = False,
        image_scale_learnable: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        # registration order (attn1, ff, attn2, norms) matches the official state_dict order
        self.attn1 = Attention(dim, None, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = Attention(dim, context_dim, heads, dim_head, dropout, image_cross_attention, image_scale_learnable)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if context is None:
            return maybe_checkpoint(self, lambda x_: self._forward(x_, None, mask), x)
        return maybe_checkpoint(self, lambda x_, c_: self._forward(x_, c_, mask), x, context)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x), mask=mask) + x
        x = self.attn2(self.norm2(x), context, mask=mask) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the H·W tokens of `(b t) c h w` features, cross-attending to `context`.

    GroupNorm(32, eps 1e-6) → proj_in (Linear with `use_linear`, else 1×1 conv) → blocks → proj_out → residual.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int = 1,
        context_dim: int | None = None,
        dropout: float = 0.0,
        use_linear: bool = False,
        image_cross_attention: bool = False,
        image_scale_learnable: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, image_cross_attention,
                                  image_scale_learnable, use_checkpoint)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        if not self.use_linear:
            y = self.proj_in(y)
        y = y.flatten(2).transpose(1, 2)  # (n, h·w, ch)
        if self.use_linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.use_linear:
            y = self.proj_out(y)
        y = y.transpose(1, 2).reshape(n, -1, h, w)
        if not self.use_linear:
            y = self.proj_out(y)
        return y + x


class TemporalTransformer(nn.Module):
    """Transformer over the frame axis of `b c t h w` features: every pixel of every batch element is a
    sequence of T tokens; attn1 and attn2 are both self-attention (no context, no positional encoding).

    GroupNorm(32, eps 1e-6) → proj_in (Linear with `use_linear`, else Conv1d kernel 1) → blocks → proj_out →
    residual. With `causal` a frame attends only to itself and earlier frames.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        use_linear: bool = False,
        causal: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.causal = causal
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv1d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, None, dropout, use_checkpoint=use_checkpoint)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv1d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x).permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t)
        if not self.use_linear:
            y = self.proj_in(y)
        y = y.transpose(1, 2)  # (b·h·w, t, ch)
        if self.use_linear:
            y = self.proj_in(y)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril() if self.causal else None
        for block in self.transformer_blocks:
            y = block(y, None, mask)
        if self.use_linear:
            y = self.proj_out(y)
        else:
            y = self.proj_out(y.transpose(1, 2)).transpose(1, 2)
        y = y.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)
        return y + x
