"""The InstructPix2Pix denoiser: an SD 1.5 UNet whose input is the noisy latent concatenated with the
source image's VAE latent (8 channels), conditioned on CLIP text hidden states."""

from __future__ import annotations

from pathlib import Path

import torch

from priorswap import Denoiser, LoadRequest, PriorswapError
from priorswap.configs import read_json
from priorswap.hub import load_component
from priorswap.nullcache import cached_null
from priorswap.text_encoders import ClipTextEncoder
from priorswap.vae import describe_vae

RECOMMENDED = {"steps": 100, "guidance": 7.5, "image_guidance": 1.5, "scheduler": "ddim"}


class InstructPix2PixDenoiser(Denoiser):
    """UNet2DConditionModel with `in_channels` = 2 × latent channels.

    A condition holds `encoder_hidden_states` (CLIP text) and `image_latents` (the raw, unscaled VAE
    latent of the source image, zeros for "no image"); `forward` concatenates the image latent to
    the noisy latent along the channels, as diffusers' StableDiffusionInstructPix2PixPipeline does.
    The text encoder is loaded on the first prompt; the empty-prompt embedding is cached on disk.
    """

    def __init__(self, unet, scheduler_config: dict, request: LoadRequest) -> None:
        self.folder = Path(request.folder)
        self.allow_pickle = request.allow_pickle
        check_channels(unet.config.in_channels, request.latent_space.channels, self.folder)
        # A latent model never clips x̂0 to [-1, 1]; DDIM's defaults would when the config (an
        # Euler-ancestral one, say) does not name these keys.
        config = {"clip_sample": False, "set_alpha_to_one": False, **scheduler_config}
        self.init_discrete(unet, config, request)
        self.text = ClipTextEncoder(self.folder, allow_pickle=request.allow_pickle, dtype=unet.dtype,
                                    device=lambda: self.device)  # where the UNet runs when it loads (offload too)
        self._empty: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        image = cond["image_latents"].to(x.device, x.dtype)
        if image.shape[-2:] != x.shape[-2:]:
            raise PriorswapError(
                f"the source-image latent is {tuple(image.shape[-2:])} but the noisy latent is {tuple(x.shape[-2:])}"
            )
        text = cond["encoder_hidden_states"].to(x.device, x.dtype)
        return self.net(torch.cat([x, image], dim=1), t, encoder_hidden_states=text).sample

    def null_condition(self) -> dict:
        """(no image, empty prompt) at the native latent size; the task builds it at the source
        image's size instead."""
        size = self.latent_size
        image = torch.zeros(1, self.latent_space.channels, size, size, device=self.device, dtype=self.dtype)
        return {"encoder_hidden_states": self.empty_prompt(), "image_latents": image}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP hidden states (B, tokens, dim) of `prompts`, padded to the tokenizer's max length."""
        return self.text.encode(prompts).to(self.device, self.dtype)

    def empty_prompt(self) -> torch.Tensor:
        """The encoding of "" (1, tokens, dim): the text null condition (cached on disk)."""
        if self._empty is None:
            key = f"text:{str(self.dtype).removeprefix('torch.')}"
            self._empty = cached_null(self.folder, key, lambda: self.encode_prompts([""]))
        return self._empty.to(self.device, self.dtype)


def check_channels(in_channels: int, latent_channels: int, folder: Path) -> None:
    if in_channels != 2 * latent_channels:
        raise PriorswapError(
            f"{folder}: the UNet takes {in_channels} input channels, but an InstructPix2Pix UNet takes "
            f"{2 * latent_channels} (the noisy latent and the source-image latent); is this an InstructPix2Pix folder?"
        )


def load(request: LoadRequest) -> InstructPix2PixDenoiser:
    from diffusers import UNet2DConditionModel

    folder = request.folder
    unet = load_component(
        UNet2DConditionModel, folder, "unet", allow_pickle=request.allow_pickle, dtype=request.dtype
    ).to(request.device)
    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
    return InstructPix2PixDenoiser(unet, scheduler_config, request)


def describe(folder: Path) -> dict:
    """Registry-entry fields for a local StableDiffusionInstructPix2PixPipeline folder."""
    from priorswap.loading import schedule_fields

    ucfg = read_json(folder / "unet" / "config.json")
    scfg = read_json(folder / "scheduler" / "scheduler_config.json")
    space = describe_vae(folder / "vae")
    check_channels(int(ucfg.get("in_channels", 4)), space["channels"], folder)
    return {
        "roles": ["model"],
        "latent_space": space,
        "schedule": schedule_fields(scfg),
        "parameterization": scfg.get("prediction_type", "epsilon"),
        "resolution": ucfg["sample_size"] * space["downsample"],
        "task": "instruct-pix2pix",
        "recommended": RECOMMENDED,
        "description": f"local InstructPix2Pix folder {folder.name}",
    }
