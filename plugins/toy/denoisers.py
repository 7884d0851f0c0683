"""Denoisers of the toy zoo: the UNet family (base prior and the three fine-tunes) and the DiT-v
prior, loaded from diffusers-style folders written by `train.py`."""

from __future__ import annotations

from pathlib import Path

import torch

from priorswap import Denoiser, LoadRequest
from priorswap.configs import read_json
from priorswap.hub import load_component

from . import models


class ToyDenoiser(Denoiser):
    """A toy network in 16×16 pixel space (1 channel). Which conditions it takes follows from its
    config: `concat_channels` extra input channels (the source image), and a class embedding that
    is a class id (class model: 0–9, null 10), an instruction id (edit: 0–2, null 3) or the encoded
    view angle (view: 500 + 10·degrees, null 0)."""

    fixed_size = True
    learned_sigma = False

    def __init__(self, net, scheduler_config: dict, request: LoadRequest, kind: str) -> None:
        self.init_discrete(net, scheduler_config, request)
        self.kind = kind  # "unet" or "dit"
        cfg = net.config
        self.resolution = cfg.sample_size * request.latent_space.downsample  # the network's own size
        self.concat_channels = 0
        self.null_class: int | None = None
        self.angle = False
        if kind == "unet":
            self.concat_channels = cfg.in_channels - cfg.out_channels
            if cfg.class_embed_type == "timestep":
                self.angle = True
                _embed_in_weights_dtype(net.class_embedding)
            elif cfg.num_class_embeds:
                self.null_class = int(cfg.num_class_embeds) - 1

    @property
    def unconditional(self) -> bool:
        return self.kind == "dit" or (self.concat_channels == 0 and self.null_class is None and not self.angle)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        if self.kind == "dit":
            return models.call_dit(self.net, x, t, cond)
        return models.call_unet(self.net, x, t, cond)

    def null_condition(self) -> dict:
        if self.kind == "dit":  # the only class is 0; 1 is DiT's class-dropout slot, trained as "no label"
            return {"class_labels": torch.tensor([int(self.net.config.num_embeds_ada_norm)], device=self.device)}
        cond: dict = {}
        if self.concat_channels:
            size = self.net.config.sample_size
            cond["image"] = torch.zeros(1, self.concat_channels, size, size, dtype=self.dtype, device=self.device)
        if self.angle:
            cond["class_labels"] = torch.tensor([models.ANGLE_NULL], device=self.device)
        elif self.null_class is not None:
            cond["class_labels"] = torch.tensor([self.null_class], device=self.device)
        return cond


def _embed_in_weights_dtype(embedding: torch.nn.Module) -> None:
    """Casts the view angle's sinusoidal features to the embedding's dtype: diffusers' `UNet2DModel` feeds
    `class_embed_type="timestep"` features in float32 (it casts the timestep's, not these), which a float16
    or bfloat16 network refuses. The angle itself stays float32 (bfloat16 would round 500 + 10·a to 4)."""
    def cast(module: torch.nn.Module, args: tuple) -> tuple:
        weight = next(module.parameters())
        return tuple(a.to(weight.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    embedding.register_forward_pre_hook(cast)


def _component(folder: Path) -> str:
    return "transformer" if (folder / "transformer").is_dir() else "unet"


def load(request: LoadRequest) -> ToyDenoiser:
    import diffusers

    folder = request.folder
    component = _component(folder)
    config = read_json(folder / component / "config.json")
    cls = getattr(diffusers, config.get("_class_name", "UNet2DModel"))
    dtype = request.dtype if request.dtype is not None else torch.float32  # weights ship as float16
    net = load_component(cls, folder, component, allow_pickle=request.allow_pickle, dtype=dtype).to(request.device)
    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
    return ToyDenoiser(net, scheduler_config, request, "dit" if component == "transformer" else "unet")


def describe(folder: Path) -> dict:
    """Registry-entry fields for a local toy folder (e.g. one trained with `priorswap toy train --out`)."""
    from priorswap.loading import schedule_fields

    component = _component(folder)
    ncfg = read_json(folder / component / "config.json")
    scfg = read_json(folder / "scheduler" / "scheduler_config.json")
    index = read_json(folder / "model_index.json")
    task = index.get("task")
    return {
        "latent_space": "toy-pixels",
        "schedule": schedule_fields(scfg),
        "parameterization": scfg.get("prediction_type", "epsilon"),
        "resolution": ncfg["sample_size"],
        "fixed_size": True,
        "roles": ["model", "prior"] if task else ["prior"],
        "task": task,
        "description": f"local toy folder {folder.name}",
    }
