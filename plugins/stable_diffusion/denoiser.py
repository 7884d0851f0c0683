"""A Stable Diffusion UNet as a σ-space denoiser with the empty-prompt null condition."""

from __future__ import annotations

from pathlib import Path

import torch

from priorswap import Denoiser, LoadRequest
from priorswap.configs import read_json
from priorswap.hub import folders_on_demand, load_component
from priorswap.nullcache import cached_null
from priorswap.text_encoders import ClipTextEncoder
from priorswap.vae import describe_vae

TEXT_FOLDERS = ["text_encoder", "tokenizer"]


class StableDiffusionDenoiser(Denoiser):
    """UNet2DConditionModel; conditions are CLIP text hidden states (`encoder_hidden_states`)."""

    def __init__(self, unet, null_embedding: torch.Tensor, scheduler_config: dict, request: LoadRequest) -> None:
        self.init_discrete(unet, scheduler_config, request)
        self.null_embedding = null_embedding.to(unet.device, unet.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.net(x, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample

    def null_condition(self) -> dict:
        return {"encoder_hidden_states": self.null_embedding}


def encode_prompt(folder: Path, prompt: str = "") -> torch.Tensor:
    """CLIP text hidden states of `prompt`, padded to the tokenizer's max length (as the pipelines do)."""
    return ClipTextEncoder(folder).encode([prompt])


def load(request: LoadRequest) -> StableDiffusionDenoiser:
    from diffusers import UNet2DConditionModel

    folder = request.folder
    unet = load_component(
        UNet2DConditionModel, folder, "unet", allow_pickle=request.allow_pickle, dtype=request.dtype
    ).to(request.device)
    # keyed on the UNet folder, so fetching the text encoder later does not change the key; the
    # text encoder is fetched and loaded only on a cache miss (a later run never downloads it)
    purpose = 'the null condition (the CLIP encoding of "") until it is cached'
    null = cached_null(
        folder / "unet", "text:", lambda: encode_prompt(folders_on_demand(request, TEXT_FOLDERS, purpose))
    )
    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
    return StableDiffusionDenoiser(unet, null, scheduler_config, request)


def describe(folder: Path) -> dict:
    """Registry-entry fields for a local StableDiffusionPipeline folder."""
    from priorswap.loading import schedule_fields

    ucfg = read_json(folder / "unet" / "config.json")
    if ucfg.get("in_channels", 4) != ucfg.get("out_channels", 4):
        from priorswap.errors import PriorswapError

        raise PriorswapError(
            f"{folder} names StableDiffusionPipeline, but its UNet takes {ucfg['in_channels']} input channels for "
            f"{ucfg.get('out_channels', 4)} output channels: an image-conditioned fine-tune (e.g. MagicBrush, an "
            "InstructPix2Pix model). Give it a registry entry with the right plugin (plugin: instruct_pix2pix; "
            "see docs/registry.md) or use its registry id (e.g. magicbrush)."
        )
    scfg = read_json(folder / "scheduler" / "scheduler_config.json")
    space = describe_vae(folder / "vae")
    return {
        "roles": ["prior"],
        "latent_space": space,
        "schedule": schedule_fields(scfg),
        "parameterization": scfg.get("prediction_type", "epsilon"),
        "resolution": ucfg["sample_size"] * space["downsample"],
        "description": f"local Stable Diffusion folder {folder.name}",
    }
