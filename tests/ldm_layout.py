"""Diffusers / transformers state dicts → the original CompVis LDM and OpenAI CLIP key layouts.

Tests use these to build tiny checkpoints shaped like released `.ckpt` files (Stable Diffusion 1.x,
Zero-1-to-3, Stable Zero123) from tiny models built with the real classes. They are the inverses of
diffusers' `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint` and of
`priorswap.plugins.dynamicrafter.openclip.vision_to_transformers`; tests/test_ldm_layout.py checks the
round trips tensor by tensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_VISION_PREFIX = "visual."

# diffusers ResnetBlock2D (UNet) → LDM ResBlock: in_layers = [GroupNorm, SiLU, Conv], emb_layers = [SiLU, Linear],
# out_layers = [GroupNorm, SiLU, Dropout, Conv].
_UNET_RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
}
# diffusers ResnetBlock2D (VAE, no time embedding) → LDM ResnetBlock.
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# diffusers Attention (VAE mid block) → LDM AttnBlock, whose q/k/v/proj_out are 1×1 convolutions.
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_CLIP_TOP = {
    "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    "vision_model.embeddings.class_embedding": "class_embedding",
    "vision_model.embeddings.position_embedding.weight": "positional_embedding",
    "vision_model.pre_layrnorm.weight": "ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    "vision_model.post_layernorm.weight": "ln_post.weight",
    "vision_model.post_layernorm.bias": "ln_post.bias",
}
_CLIP_LAYER = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}


def _rename_module(rest: str, names: Mapping[str, str], what: str) -> str:
    """`<module>.<param>` with the module renamed through `names` (ValueError for a module not there)."""
    module, _, param = rest.rpartition(".")
    if module not in names:
        raise ValueError(f"unexpected {what} parameter {rest!r}: no LDM name for module {module!r}")
    return f"{names[module]}.{param}"


def _apply(state_dict: Mapping[str, torch.Tensor], rename: Callable[[str], str],
           prefix: str) -> dict[str, torch.Tensor]:
    """Renames every key, refusing two keys that land on the same name."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = prefix + rename(key)
        if new in out:
            raise ValueError(f"two parameters map to {new!r} (the second is {key!r})")
        out[new] = value
    return out


def unet_ldm_key(key: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    """One diffusers `UNet2DConditionModel` key → its LDM `UNetModel` key (without `model.diffusion_model.`).

    Each down level holds `layers_per_block` input blocks `[ResBlock, SpatialTransformer?]` and, except the
    last, one `[Downsample]` (`.0.op`); each up level holds `layers_per_block + 1` output blocks
    `[ResBlock, SpatialTransformer?, Upsample?]` with the upsampler (`.conv`) in the level's last one.
    """
    per_level = layers_per_block + 1
    for name, ldm in _UNET_TOP.items():
        if key.startswith(name + "."):
            return f"{ldm}.{key[len(name) + 1:]}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        side, level, kind, index, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        block = level * per_level + index + (1 if side == "down" else 0)
        where = f"{'input' if side == 'down' else 'output'}_blocks.{block}"
        if kind == "resnets":
            return f"{where}.0.{_rename_module(rest, _UNET_RESNET, 'UNet resnet')}"
        return f"{where}.1.{rest}"  # SpatialTransformer: the same names as diffusers' Transformer2DModel
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"input_blocks.{int(m[1]) * per_level + layers_per_block + 1}.0.op.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        level = int(m[1])
        slot = 2 if level in up_blocks_with_attention else 1
        return f"output_blocks.{level * per_level + layers_per_block}.{slot}.conv.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_module(m[2], _UNET_RESNET, 'UNet resnet')}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    raise ValueError(f"unexpected UNet parameter {key!r} (only SD-1.x style UNet2DConditionModel keys are mapped)")


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    """A diffusers `UNet2DConditionModel` state dict (SD-1.x layout) → LDM keys under `prefix`.

    `config` is the model's config (`unet.config`); only its integer `layers_per_block` is read.
    """
    layers_per_block = config["layers_per_block"]
    if not isinstance(layers_per_block, int):
        raise ValueError(f"layers_per_block must be one integer for the LDM layout, got {layers_per_block!r}")
    with_attention = {int(m[1]) for k in state_dict if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    return _apply(state_dict, lambda k: unet_ldm_key(k, layers_per_block, with_attention), prefix)


def vae_ldm_key(key: str, num_levels: int) -> str:
    """One diffusers `AutoencoderKL` key → its LDM `AutoencoderKL` key (without `first_stage_model.`).

    The decoder's `up_blocks[i]` is LDM's `up[num_levels - 1 - i]`: LDM numbers decoder levels by resolution,
    like the encoder's, while diffusers numbers them in the order they run.
    """
    if m := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(\w+)", key):
        return f"{m[1]}.{'norm_out' if m[2] == 'conv_norm_out' else m[2]}.{m[3]}"
    if re.fullmatch(r"(post_)?quant_conv\.\w+", key):
        return key
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename_module(m[3], _VAE_RESNET, 'VAE resnet')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = num_levels - 1 - int(m[1])
        return f"decoder.up.{level}.block.{m[2]}.{_rename_module(m[3], _VAE_RESNET, 'VAE resnet')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        return f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename_module(m[3], _VAE_RESNET, 'VAE resnet')}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_rename_module(m[2], _VAE_ATTENTION, 'VAE attention')}"
    raise ValueError(f"unexpected AutoencoderKL parameter {key!r}")


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any],
               prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    """A diffusers `AutoencoderKL` state dict → LDM keys under `prefix`; the mid-block attention's Linear
    weights become the (C, C, 1, 1) 1×1-convolution weights LDM stores. `config` is `vae.config`."""
    num_levels = len(config["up_block_types"])
    out = _apply(state_dict, lambda k: vae_ldm_key(k, num_levels), prefix)
    for key, value in out.items():
        if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", key):
            if value.dim() != 2:
                raise ValueError(f"expected a Linear weight for {key!r}, got shape {tuple(value.shape)}")
            out[key] = value[:, :, None, None]
    return out


def clip_vision_to_openai(state_dict: Mapping[str, torch.Tensor],
                          prefix: str = CLIP_VISION_PREFIX) -> dict[str, torch.Tensor]:
    """A transformers `CLIPVisionModelWithProjection` state dict → OpenAI CLIP `VisionTransformer` keys under
    `prefix` (`visual.` as in OpenAI's `clip` models; Zero-1-to-3 checkpoints add `cond_stage_model.model.`).

    Per layer, `attn.in_proj_weight` / `attn.in_proj_bias` are the q, k and v projections stacked along dim 0
    (`nn.MultiheadAttention`); `proj` is `visual_projection.weight` transposed (OpenAI computes `x @ proj`).
    The `position_ids` buffer has no OpenAI counterpart and is dropped.
    """
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}  # "<layer>.<weight|bias>" → {"q": ..., "k": ..., "v": ...}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        if key in _CLIP_TOP:
            out[prefix + _CLIP_TOP[key]] = value
        elif key == "visual_projection.weight":
            out[prefix + "proj"] = value.t().contiguous()
        elif m := re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused.setdefault(f"{m[1]}.{m[3]}", {})[m[2]] = value
        elif m := re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)", key):
            out[f"{prefix}transformer.resblocks.{m[1]}.{_rename_module(m[2], _CLIP_LAYER, 'CLIP layer')}"] = value
        else:
            raise ValueError(f"unexpected CLIPVisionModelWithProjection parameter {key!r}")
    for layer_kind, parts in fused.items():
        layer, kind = layer_kind.split(".")
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {layer}: {kind} of q/k/v projections incomplete (have {sorted(parts)})")
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    return out
