"""Which released checkpoint a file is, from its tensor names (no torch import): the families'
`describe_checkpoint` hooks, so that `--model path/model.ckpt` works without a registry entry.

DynamiCrafter 256 is the only checkpoint with learned image-attention scales (`attn2.alpha`); 512, 1024 and
512-interp have the same tensor names (the caller names one: `model.ckpt#dynamicrafter-1024`); VideoCrafter2
has a UNet but no image Resampler (`image_proj_model`).
"""

from __future__ import annotations

from .presets import PRESETS, RECOMMENDED

UNET = "model.diffusion_model."
RESAMPLER = "image_proj_model."
_RESOLUTION = {"dynamicrafter-256": 256, "dynamicrafter-512": 512, "dynamicrafter-1024": 1024,
               "dynamicrafter-512-interp": 512, "videocrafter2": 512}
_DESCRIPTION = {
    "dynamicrafter-256": "DynamiCrafter 256 (256×256 image-to-video, ε-prediction)",
    "dynamicrafter-512": "DynamiCrafter 512 (320×512 image-to-video, v-prediction, zero-terminal-SNR)",
    "dynamicrafter-1024": "DynamiCrafter 1024 (576×1024 image-to-video, v-prediction, zero-terminal-SNR)",
    "dynamicrafter-512-interp": "DynamiCrafter 512 interpolation (first and last frame)",
    "videocrafter2": "VideoCrafter2 (320×512 text-to-video, ε-prediction; the video prior)",
}


def entry_fields(preset: str) -> dict:
    """The registry-entry fields of a released checkpoint preset (what the shipped entries say)."""
    scheduler = PRESETS[preset]["scheduler"]
    video_prior = PRESETS[preset]["lvdm"]["family"] == "videocrafter"
    return {
        "roles": ["model", "prior"] if video_prior else ["model"],
        "variant": preset,
        "description": _DESCRIPTION[preset],
        "latent_space": "sd-kl-f8",
        "schedule": {"beta_schedule": scheduler["beta_schedule"], "beta_start": scheduler["beta_start"],
                     "beta_end": scheduler["beta_end"],
                     "zero_terminal_snr": bool(scheduler.get("rescale_betas_zero_snr", False))},
        "parameterization": scheduler["prediction_type"],
        "modality": "video",
        "resolution": _RESOLUTION[preset],
        "task": "text-to-video" if video_prior else "image-to-video",
        "recommended": RECOMMENDED["videocrafter" if video_prior else "dynamicrafter"],
    }


def describe_dynamicrafter(keys: set[str]) -> list[dict]:
    """Entry fields of each DynamiCrafter preset a checkpoint with these tensor names can be."""
    if not any(k.startswith(UNET) for k in keys) or not any(k.startswith(RESAMPLER) for k in keys):
        return []
    if any(k.startswith(UNET) and k.endswith(".attn2.alpha") for k in keys):
        return [entry_fields("dynamicrafter-256")]
    return [entry_fields(p) for p in ("dynamicrafter-512", "dynamicrafter-1024", "dynamicrafter-512-interp")]


def describe_videocrafter(keys: set[str]) -> list[dict]:
    """VideoCrafter2's entry fields when the tensor names are a UNet without an image Resampler."""
    if any(k.startswith(UNET) for k in keys) and not any(k.startswith(RESAMPLER) for k in keys):
        return [entry_fields("videocrafter2")]
    return []
