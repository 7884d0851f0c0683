"""The DiT denoiser: a diffusers DiTTransformer2DModel with its class-label null condition."""

from __future__ import annotations

from pathlib import Path

import torch

from priorswap import Denoiser, LoadRequest
from priorswap.configs import read_json
from priorswap.hub import load_component
from priorswap.vae import describe_vae


class DiTDenoiser(Denoiser):
    """Class-conditional DiT; the null condition is the extra class `num_embeds_ada_norm` (1000)."""

    learned_sigma = True
    # diffusers' PatchEmbed recomputes the sin-cos position embeddings for another size, so the network runs,
    # but it was trained at one size only: as a prior it runs at its own size (the planner's `resample`)
    fixed_size = True

    def __init__(self, transformer, scheduler_config: dict, request: LoadRequest) -> None:
        self.init_discrete(transformer, scheduler_config, request)
        cfg = transformer.config
        self.null_class = int(cfg.num_embeds_ada_norm)
        self.learned_sigma = cfg.out_channels == 2 * cfg.in_channels
        self.resolution = cfg.sample_size * request.latent_space.downsample  # the network's own size
        self.allow_pickle = request.allow_pickle  # the task loads the VAE under the same opt-in

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.net(x, timestep=t, class_labels=cond["class_labels"]).sample

    def null_condition(self) -> dict:
        return {"class_labels": torch.tensor([self.null_class], device=self.device)}


def _transformer_class(folder: Path):
    import diffusers

    config = read_json(folder / "transformer" / "config.json")
    name = config.get("_class_name", "DiTTransformer2DModel")
    return diffusers.DiTTransformer2DModel if name == "Transformer2DModel" else getattr(diffusers, name)


def load(request: LoadRequest) -> DiTDenoiser:
    folder = request.folder
    transformer = load_component(
        _transformer_class(folder), folder, "transformer", allow_pickle=request.allow_pickle, dtype=request.dtype
    ).to(request.device)
    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
    return DiTDenoiser(transformer, scheduler_config, request)


def describe(folder: Path) -> dict:
    """Registry-entry fields for a local DiTPipeline folder (e.g. a user's fine-tuned DiT)."""
    from priorswap.loading import schedule_fields

    tcfg = read_json(folder / "transformer" / "config.json")
    scfg = read_json(folder / "scheduler" / "scheduler_config.json")
    space = describe_vae(folder / "vae")
    return {
        "latent_space": space,
        "schedule": schedule_fields(scfg),
        "parameterization": scfg.get("prediction_type", "epsilon"),
        "resolution": tcfg["sample_size"] * space["downsample"],
        "learned_sigma": tcfg.get("out_channels") == 2 * tcfg.get("in_channels", 4),
        "fixed_size": True,
        "description": f"local DiT folder {folder.name}",
    }
