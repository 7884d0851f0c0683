"""The Zero-1-to-3 denoiser: an 8-channel UNet2DConditionModel (noisy latent + source-image latent)
with one cross-attention token (CLIP image embedding and camera pose, through `cc_projection`).

The hub folders name a community pipeline class that diffusers does not ship (kxic/zero123-*:
`Zero1to3StableDiffusionPipeline` with `cc_projection/`; ashawkey/*-diffusers: `Zero123Pipeline` with
`clip_camera_projection/`), so the components are loaded one by one here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from priorswap import Denoiser, DiscreteSchedule, LoadRequest, PriorswapError
from priorswap.configs import read_json
from priorswap.denoiser import execution_device
from priorswap.hub import PICKLE_SUFFIXES, load_component, load_state_dict
from priorswap.vae import VaeDecoder, describe_vae

IN_CHANNELS = 8  # 4 noisy-latent channels + 4 source-image latent channels
CC_DEFAULT_IN, CC_DEFAULT_OUT = 772, 768  # CCProjection's defaults: CLIP ViT-L/14 (768) + pose (4)
CC_KEY_PREFIXES = ("projection.", "cc_projection.", "proj.")  # kxic conversion, original checkpoint, ashawkey's
# the camera projection's folder: kxic's Zero1to3StableDiffusionPipeline layout, or ashawkey's Zero123Pipeline one
CC_FOLDERS = ("cc_projection", "clip_camera_projection")


@dataclass
class Conditioner:
    """What turns a source image and a pose into conditions: CLIP image encoder, cc_projection, VAE."""

    image_encoder: torch.nn.Module
    cc_projection: torch.nn.Linear
    vae: VaeDecoder

    @property
    def device(self) -> torch.device:
        return execution_device(self.cc_projection)

    def modules(self) -> list[torch.nn.Module]:
        return [self.image_encoder, self.cc_projection, self.vae.vae]

    @property
    def dtype(self) -> torch.dtype:
        return self.cc_projection.weight.dtype


class Zero123Denoiser(Denoiser):
    """UNet2DConditionModel with 8 input channels; conditions are `image_latents` (B, 4, h, w), concatenated
    to the noisy latent, and `encoder_hidden_states` (B, 1, D), the projected image-and-pose token."""

    def __init__(self, unet, conditioner: Conditioner, scheduler_config: dict, request: LoadRequest) -> None:
        self.net = unet.eval().requires_grad_(False)
        self.conditioner = conditioner
        self.latent_space = request.latent_space
        self.scheduler_config = dict(scheduler_config)
        self.schedule = DiscreteSchedule.from_scheduler_config(scheduler_config)
        self.parameterization = scheduler_config.get("prediction_type", "epsilon")
        self.resolution = request.entry.resolution
        self.context_dim = int(unet.config.cross_attention_dim)
        self.dtype = unet.dtype
        self.device = unet.device

    def offload_modules(self) -> list[torch.nn.Module]:
        """The UNet and the conditioner's networks (CLIP image encoder, camera projection, VAE)."""
        return [self.net, *self.conditioner.modules()]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        sample = torch.cat([x, cond["image_latents"].to(x.dtype)], dim=1)
        return self.net(sample, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample

    def null_condition(self, latent_size: int | None = None) -> dict:
        """Zeros for both inputs (Zero-1-to-3's null: zero image latents, zero context after the projection)."""
        size = latent_size or self.latent_size
        channels = self.net.config.in_channels - self.latent_space.channels
        return {
            "image_latents": torch.zeros(1, channels, size, size, device=self.device, dtype=self.dtype),
            "encoder_hidden_states": torch.zeros(1, 1, self.context_dim, device=self.device, dtype=self.dtype),
        }


def _cc_state(folder: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The cc_projection tensors from `folder` (safetensors first; a pickle only when allowed)."""
    from safetensors.torch import load_file

    tensors = sorted(folder.glob("*.safetensors"))
    preferred = folder / "diffusion_pytorch_model.safetensors"
    if preferred in tensors:
        return load_file(preferred)
    if len(tensors) == 1:
        return load_file(tensors[0])
    if len(tensors) > 1:
        raise PriorswapError(f"{folder} holds several .safetensors files; keep diffusion_pytorch_model.safetensors")
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise PriorswapError(f"{folder} holds no cc_projection weights (no .safetensors file)")
    if len(pickles) > 1:
        raise PriorswapError(f"{folder} holds several pickles; convert the checkpoint to safetensors")
    return load_state_dict(pickles[0], allow_pickle=allow_pickle)  # kept as safetensors after the first run


def load_cc_projection(folder: Path, allow_pickle: bool = False, dtype: torch.dtype | None = None) -> torch.nn.Linear:
    """The camera projection as a plain `torch.nn.Linear(in_channel, out_channel)`.

    Reads `folder/config.json` (`in_channel`/`out_channel`; the released configs carry only
    `_class_name`, so CCProjection's defaults 772 → 768 apply) and the weights under the diffusers
    names `projection.weight/bias` (kxic), the original checkpoint's `cc_projection.weight/bias`, or
    CLIPCameraProjection's `proj.weight/bias` with `embedding_dim`/`additional_embeddings` in its config.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PriorswapError(f"{folder.parent} has no 'cc_projection' (or 'clip_camera_projection') folder: the "
                             "Zero-1-to-3 camera projection")
    config = read_json(folder / "config.json", optional=True)
    if "embedding_dim" in config:  # CLIPCameraProjection: embedding_dim + additional_embeddings → embedding_dim
        n_out = int(config["embedding_dim"])
        n_in = n_out + int(config.get("additional_embeddings", 4))
    else:
        n_in = int(config.get("in_channel", CC_DEFAULT_IN))
        n_out = int(config.get("out_channel", CC_DEFAULT_OUT))
    state = _cc_state(folder, allow_pickle)
    for prefix in CC_KEY_PREFIXES:
        if {prefix + "weight", prefix + "bias"} <= set(state):
            weight, bias = state[prefix + "weight"], state[prefix + "bias"]
            break
    else:
        raise PriorswapError(
            f"{folder}: no camera projection weights under the names projection.weight/bias, "
            f"cc_projection.weight/bias or proj.weight/bias (found: {', '.join(sorted(state)) or 'nothing'})"
        )
    if tuple(weight.shape) != (n_out, n_in) or tuple(bias.shape) != (n_out,):
        raise PriorswapError(
            f"{folder}: the weights are a {weight.shape[1]} → {weight.shape[0]} projection but the config says "
            f"{n_in} → {n_out}" + ("" if "in_channel" in config else " (CCProjection's defaults)")
            + "; set in_channel/out_channel in cc_projection/config.json to the weights' sizes"
        )
    linear = torch.nn.Linear(n_in, n_out)
    linear.load_state_dict({"weight": weight, "bias": bias})
    linear = linear.eval().requires_grad_(False)
    return linear.to(dtype) if dtype is not None else linear


def projection_folder(folder: Path) -> Path:
    """The camera projection's sub-folder: `cc_projection/` (kxic) or `clip_camera_projection/` (ashawkey)."""
    for name in CC_FOLDERS:
        if (folder / name).is_dir():
            return folder / name
    return folder / CC_FOLDERS[0]  # missing: load_cc_projection says so


def load(request: LoadRequest) -> Zero123Denoiser:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    folder, pickle, dtype = request.folder, request.allow_pickle, request.dtype
    unet = load_component(UNet2DConditionModel, folder, "unet", allow_pickle=pickle, dtype=dtype)
    if unet.config.in_channels != IN_CHANNELS:
        raise PriorswapError(
            f"{folder / 'unet'} takes {unet.config.in_channels} input channels; a Zero-1-to-3 UNet takes "
            f"{IN_CHANNELS} (noisy latent + source-image latent)"
        )
    encoder = load_component(CLIPVisionModelWithProjection, folder, "image_encoder", allow_pickle=pickle, dtype=dtype)
    vae = load_component(AutoencoderKL, folder, "vae", allow_pickle=pickle, dtype=dtype)
    cc = load_cc_projection(projection_folder(folder), allow_pickle=pickle, dtype=unet.dtype)
    if cc.out_features != unet.config.cross_attention_dim:
        raise PriorswapError(
            f"{folder}: cc_projection gives {cc.out_features}-dim tokens but the UNet attends to "
            f"{unet.config.cross_attention_dim}-dim ones"
        )
    device = request.device
    conditioner = Conditioner(
        encoder.eval().requires_grad_(False).to(device), cc.to(device), VaeDecoder(vae.to(device), request.latent_space)
    )
    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json", optional=True)
    return Zero123Denoiser(unet.to(device), conditioner, scheduler_config, request)


def describe(folder: Path) -> dict:
    """Registry-entry fields for a local Zero-1-to-3 folder (diffusers layout with cc_projection/)."""
    from priorswap.loading import schedule_fields

    ucfg = read_json(folder / "unet" / "config.json", optional=True)
    if ucfg.get("in_channels") != IN_CHANNELS:
        raise PriorswapError(
            f"{folder / 'unet'}: in_channels is {ucfg.get('in_channels')}, a Zero-1-to-3 UNet takes {IN_CHANNELS}"
        )
    scfg = read_json(folder / "scheduler" / "scheduler_config.json", optional=True)
    space = describe_vae(folder / "vae")
    return {
        "latent_space": space,
        "schedule": schedule_fields(scfg),
        "parameterization": scfg.get("prediction_type", "epsilon"),
        "resolution": ucfg["sample_size"] * space["downsample"],
        "description": f"local Zero-1-to-3 folder {folder.name}",
    }
