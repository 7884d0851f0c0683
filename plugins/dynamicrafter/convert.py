"""Split a released DynamiCrafter / VideoCrafter2 Lightning checkpoint into per-component state dicts.

The released `model.ckpt` files hold one `LatentDiffusion` state_dict: the UNet under
`model.diffusion_model.`, the image Resampler under `image_proj_model.`, the VAE under
`first_stage_model.`, the OpenCLIP text encoder under `cond_stage_model.`, the OpenCLIP image encoder
under `embedder.`, plus diffusion buffers (`betas`, `alphas_cumprod`, …, `scale_arr`) at the top level.
`split_checkpoint` is a pure function on a dict of tensors; `load_checkpoint` reads a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from priorswap.errors import PriorswapError, WeightsUnavailable

# key prefix in the checkpoint → component name
PREFIXES: dict[str, str] = {
    "model.diffusion_model.": "unet",
    "image_proj_model.": "image_proj",
    "first_stage_model.": "vae",
    "cond_stage_model.": "text_encoder",
    "embedder.": "image_encoder",
}
SCHEDULE = "schedule"  # top-level buffers without a dot: betas, alphas_cumprod, scale_arr, logvar, ...
IGNORED_PREFIXES = ("model_ema.",)  # EMA shadow weights of training runs (not used at inference)
DEEPSPEED_PREFIX = "_forward_module."
# the 256 checkpoint names the fs embedding `framestride_embed`; the network (and the 512/1024 files) `fps_embedding`
RENAMES = {"framestride_embed": "fps_embedding"}


def unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The model state_dict inside a Lightning (`state_dict`) or DeepSpeed (`module`) checkpoint dict."""
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        return checkpoint["state_dict"]
    if "module" in checkpoint and isinstance(checkpoint["module"], Mapping):
        return {k.removeprefix(DEEPSPEED_PREFIX): v for k, v in checkpoint["module"].items()}
    return checkpoint


def split_checkpoint(checkpoint: Mapping[str, Any], strict: bool = True) -> dict[str, dict[str, Any]]:
    """{component: state_dict with the prefix removed} for the components present.

    Components: `unet`, `image_proj`, `vae`, `text_encoder`, `image_encoder`, `schedule` (top-level
    buffers). `model_ema.*` is dropped. A key with any other prefix raises with `strict`, else lands in
    `other` unchanged.
    """
    state_dict = unwrap(checkpoint)
    parts: dict[str, dict[str, Any]] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        for prefix, component in PREFIXES.items():
            if key.startswith(prefix):
                name = key[len(prefix):]
                if component == "unet":
                    for old, new in RENAMES.items():
                        name = name.replace(old, new)
                parts.setdefault(component, {})[name] = value
                break
        else:
            if "." not in key:
                parts.setdefault(SCHEDULE, {})[key] = value
            else:
                unknown.append(key)
                parts.setdefault("other", {})[key] = value
    if unknown and strict:
        shown = ", ".join(unknown[:5]) + (f" … ({len(unknown)} in all)" if len(unknown) > 5 else "")
        raise PriorswapError(
            f"checkpoint keys with an unknown prefix: {shown}. Expected prefixes: {', '.join(PREFIXES)}; "
            "pass strict=False to keep them under 'other'"
        )
    return parts


def load_checkpoint(path: Path, allow_pickle: bool = False) -> dict[str, dict[str, Any]]:
    """Read a checkpoint file and split it. `.safetensors` always loads; pickled `.ckpt`/`.pt`/`.bin` files
    load only with `allow_pickle` (and then through `torch.load(weights_only=True)`)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return split_checkpoint(load_file(path))
    if not allow_pickle:
        raise WeightsUnavailable(
            f"{path.name} is a pickled checkpoint; loading it runs code from the file. Convert it to "
            "safetensors, or opt in with allow_pickle=True (loaded with torch.load(weights_only=True))"
        )
    import pickle

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsUnavailable(
            f"{path.name} holds objects other than tensors, which weights_only loading refuses ({e}). "
            "Extract its state_dict into a safetensors file with a trusted script first"
        ) from None
    return split_checkpoint(checkpoint)
