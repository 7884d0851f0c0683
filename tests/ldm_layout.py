"""Diffusers state dicts → the original CompVis LDM key layout.

Tests use `vae_to_ldm` to build tiny checkpoints shaped like released `.ckpt` files (the `first_stage_model.`
VAE of DynamiCrafter's Lightning checkpoints) from tiny models built with the real classes. It is the inverse
of diffusers' `convert_ldm_vae_checkpoint`; tests/test_ldm_layout.py checks the round trip tensor by tensor.
"""


from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

VAE_PREFIX = "first_stage_model."

# diffusers ResnetBlock2D (VAE, no time embedding) → LDM ResnetBlock.
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# diffusers Attention (VAE mid block) → LDM AttnBlock, whose q/k/v/proj_out are 1×1 convolutions.
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


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
