"""Autoencoder facts and decoding, read from a diffusers `vae/` folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .configs import read_json
from .denoiser import execution_device
from .hub import load_component
from .latents import LatentSpace

KNOWN_FAMILIES = {
    # (latent channels, block_out_channels, scaling factor) → the autoencoder's published name
    (4, (128, 256, 512, 512), 0.18215): "sd-kl-f8",
    (4, (128, 256, 512, 512), 0.13025): "sdxl-kl-f8",
}


def describe_vae(folder: Path) -> dict[str, Any]:
    """Latent-space fields (channels, scale, shift, downsample, family) from a vae/config.json."""
    cfg = read_json(folder / "config.json")
    channels = int(cfg.get("latent_channels", 4))
    blocks = tuple(cfg.get("block_out_channels", (128, 256, 512, 512)))
    scale = float(cfg.get("scaling_factor", 0.18215))
    family = KNOWN_FAMILIES.get((channels, blocks, scale))
    if family is None:
        essentials = json.dumps([cfg.get("_class_name"), channels, blocks, scale], sort_keys=True)
        family = "vae-" + hashlib.sha1(essentials.encode()).hexdigest()[:10]
    return {
        "channels": channels,
        "scale": scale,
        "shift": float(cfg.get("shift_factor") or 0.0),
        "downsample": 2 ** (len(blocks) - 1),
        "family": family,
    }


class VaeDecoder:
    """Decodes model-space latents to images in [0, 1] (and encodes images) with a diffusers AutoencoderKL."""

    def __init__(self, vae: Any, space: LatentSpace) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.space = space

    @classmethod
    def from_folder(cls, folder: Path, space: LatentSpace, allow_pickle: bool = False) -> VaeDecoder | None:
        if not (Path(folder) / "vae").is_dir():
            return None
        from diffusers import AutoencoderKL

        return cls(load_component(AutoencoderKL, Path(folder), "vae", allow_pickle=allow_pickle), space)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents / self.space.scale + self.space.shift
        image = self.vae.decode(z.to(self.vae.dtype)).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, scaled: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Latents of images in [-1, 1], (B, 3, H, W): the posterior mode (its mean), or a sample when
        `generator` is given. `scaled`: in model space ((z − shift)·scale); else the raw VAE latent,
        as InstructPix2Pix and Zero-1-to-3 feed their concat channels."""
        dist = self.vae.encode(images.to(execution_device(self.vae), self.vae.dtype)).latent_dist
        z = dist.sample(generator) if generator is not None else dist.mode()
        return (z - self.space.shift) * self.space.scale if scaled else z
