"""The lvdm 3-D UNet of DynamiCrafter and VideoCrafter2 (`model.diffusion_model`).

`UNet3D(**unet_config["params"])` takes the official configuration names; its state_dict keys equal the
released checkpoints' keys without the `model.diffusion_model.` prefix. Input and output are
(B, C, T, H, W); see docs/families/dynamicrafter.md for the architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from priorswap.errors import PriorswapError

from .attention import TEXT_CONTEXT_LEN, SpatialTransformer, TemporalTransformer
from .layers import Downsample, ResBlock, Upsample, fold_frames, normalization, timestep_embedding, unfold_frames

IMAGE_TOKENS_PER_FRAME = 16  # the official forward hard-codes the per-frame split at 16 tokens
VIDEOCRAFTER_DEFAULT_FPS = 16  # default of the `fps` argument in VideoCrafter2's forward


class TimestepSequence(nn.ModuleList):
    """The layers of one UNet stage, called with what each needs (lvdm `TimestepEmbedSequential`)."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, batch: int) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb, batch)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            elif isinstance(layer, TemporalTransformer):
                h = fold_frames(layer(unfold_frames(h, batch)))
            else:
                h = layer(h)
        return h


def _unsupported(**flags: object) -> None:
    """Clear errors for official options that no released DynamiCrafter / VideoCrafter2 config uses."""
    for name, (value, ok) in flags.items():
        if value != ok:
            raise PriorswapError(
                f"UNet3D: {name}={value!r} is not supported (the released DynamiCrafter and VideoCrafter2 "
                f"configs use {ok!r}); use a config with {name}: {ok!r}"
            )


class UNet3D(nn.Module):
    """Video UNet: spatial ResBlocks / transformers per frame, temporal convs / transformers across frames.

    Conditioning: timestep `t`; cross-attention `context` (B, 77 [+ image tokens], context_dim); with
    `fs_condition` (DynamiCrafter) or `fps_cond` (VideoCrafter2) a frame-stride / frame-rate value `fs`.
    With `image_cross_attention` the image tokens after the 77 text tokens get their own key/value
    projections; when there are exactly 16 image tokens per frame, frame i sees only its own 16.
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        context_dim: int | None = None,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        transformer_depth: int = 1,
        use_linear: bool = False,
        use_checkpoint: bool = False,
        temporal_conv: bool = False,
        tempspatial_aware: bool = False,
        temporal_attention: bool = True,
        use_relative_position: bool = True,
        use_causal_attention: bool = False,
        temporal_length: int | None = None,
        use_fp16: bool = False,
        addition_attention: bool = False,
        temporal_selfatt_only: bool = True,
        image_cross_attention: bool = False,
        image_cross_attention_scale_learnable: bool = False,
        default_fs: int = 4,
        fs_condition: bool = False,
        fps_cond: bool = False,
        temporal_transformer_depth: int | None = None,
        use_image_attention: bool = False,
    ):
        super().__init__()
        _unsupported(dims=(dims, 2), use_scale_shift_norm=(use_scale_shift_norm, False),
                     resblock_updown=(resblock_updown, False), tempspatial_aware=(tempspatial_aware, False),
                     use_relative_position=(use_relative_position, False), use_fp16=(use_fp16, False),
                     temporal_selfatt_only=(temporal_selfatt_only, True),
                     use_image_attention=(use_image_attention, False))
        if (num_heads == -1) == (num_head_channels == -1):
            raise PriorswapError("UNet3D: set exactly one of num_heads and num_head_channels")
        if addition_attention and num_head_channels == -1:
            raise PriorswapError("UNet3D: addition_attention builds init_attn from num_head_channels; set it")
        if fs_condition and fps_cond:
            raise PriorswapError("UNet3D: fs_condition (DynamiCrafter) and fps_cond (VideoCrafter2) exclude each other")
        self.in_channels, self.out_channels, self.model_channels = in_channels, out_channels, model_channels
        self.temporal_length = temporal_length
        self.image_cross_attention = image_cross_attention
        self.fs_condition = fs_condition or fps_cond
        self.default_fs = default_fs if fs_condition else VIDEOCRAFTER_DEFAULT_FPS
        self.addition_attention = addition_attention
        emb_dim = model_channels * 4
        temporal_depth = temporal_transformer_depth or transformer_depth

        def heads_for(ch: int) -> tuple[int, int]:
            if num_head_channels != -1:
                return ch // num_head_channels, num_head_channels
            return num_heads, ch // num_heads

        def res_block(ch: int, out: int | None = None) -> ResBlock:
            return ResBlock(ch, emb_dim, dropout, out, use_temporal_conv=temporal_conv, use_checkpoint=use_checkpoint)

        def attention_layers(ch: int) -> list[nn.Module]:
            heads, dim_head = heads_for(ch)
            layers: list[nn.Module] = [
                SpatialTransformer(ch, heads, dim_head, transformer_depth, context_dim, use_linear=use_linear,
                                   image_cross_attention=image_cross_attention,
                                   image_scale_learnable=image_cross_attention_scale_learnable,
                                   use_checkpoint=use_checkpoint)
            ]
            if temporal_attention:
                layers.append(TemporalTransformer(ch, heads, dim_head, temporal_depth, use_linear=use_linear,
                                                  causal=use_causal_attention, use_checkpoint=use_checkpoint))
            return layers

        def embedding_mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.time_embed = embedding_mlp()
        if self.fs_condition:
            self.fps_embedding = embedding_mlp()
            if fs_condition:  # DynamiCrafter starts the fs branch at zero; VideoCrafter2 does not
                nn.init.zeros_(self.fps_embedding[-1].weight)
                nn.init.zeros_(self.fps_embedding[-1].bias)
        self.input_blocks = nn.ModuleList([TimestepSequence([nn.Conv2d(in_channels, model_channels, 3, padding=1)])])
        if addition_attention:
            # 8 heads of num_head_channels whatever the width, Conv1d projections
            self.init_attn = TimestepSequence([
                TemporalTransformer(model_channels, 8, num_head_channels, transformer_depth, use_linear=False,
                                    causal=False, use_checkpoint=use_checkpoint)
            ])

        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += attention_layers(ch)
                self.input_blocks.append(TimestepSequence(layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepSequence([Downsample(ch, conv_resample, ch)]))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepSequence([res_block(ch), *attention_layers(ch), res_block(ch)])

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += attention_layers(ch)
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequence(layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def frame_context(self, context: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, S, C) → (B·T, S', C): per-frame image tokens when S = 77 + 16·T, else the whole context per frame."""
        if self.image_cross_attention and context.shape[1] == TEXT_CONTEXT_LEN + IMAGE_TOKENS_PER_FRAME * frames:
            b, _, c = context.shape
            text = context[:, :TEXT_CONTEXT_LEN].repeat_interleave(frames, dim=0)
            image = context[:, TEXT_CONTEXT_LEN:].reshape(b * frames, IMAGE_TOKENS_PER_FRAME, c)
            return torch.cat([text, image], dim=1)
        return context.repeat_interleave(frames, dim=0)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor,
        fs: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """x (B, in_channels, T, H, W), timesteps (B,) or scalar (may be fractional), context (B, S, context_dim),
        fs (B,) or int: frame stride / frame rate (None → the configured default) → (B, out_channels, T, H, W)."""
        if x.ndim != 5:
            raise PriorswapError(f"UNet3D expects x of shape (B, C, T, H, W), got {tuple(x.shape)}")
        b, _, t, _, _ = x.shape
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if self.fs_condition:
            fs = self.default_fs if fs is None else fs
            fs = torch.as_tensor(fs, device=x.device)
            if fs.ndim == 0:
                fs = fs.expand(b)
            emb = emb + self.fps_embedding(timestep_embedding(fs, self.model_channels).to(x.dtype))
        emb = emb.repeat_interleave(t, dim=0)
        context = self.frame_context(context, t)

        h = fold_frames(x)
        skips = []
        for index, stage in enumerate(self.input_blocks):
            h = stage(h, emb, context, b)
            if index == 0 and self.addition_attention:
                h = self.init_attn(h, emb, context, b)
            skips.append(h)
        h = self.middle_block(h, emb, context, b)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, b)
        return unfold_frames(self.out(h), b)
