"""σ-space denoisers for the lvdm 3-D UNet: DynamiCrafter (image-to-video) and VideoCrafter2 (text-to-video).

Folder layout (what `convert.save_folder` writes from a released checkpoint):

    model_index.json                   {"_class_name": "DynamiCrafterPipeline" | "VideoCrafterPipeline"}
    unet/config.json, unet/model.safetensors                UNet3D(**config)
    image_proj/config.json, image_proj/model.safetensors    Resampler(**config)   (DynamiCrafter only)
    scheduler/scheduler_config.json                         diffusers DDIMScheduler config (official grid)
    scheduler/lvdm_config.json                              latent rescaling, fs default, frames, size
    text_encoder/, tokenizer/                               transformers CLIPTextModel / CLIPTokenizer
    image_encoder/                                          transformers CLIPVisionModelWithProjection
    vae/                                                    diffusers AutoencoderKL (applied frame by frame)

A condition holds `context` (B, 77 [+ image tokens], D), `fs` (B,) and, for DynamiCrafter, `concat`
(B, C, T, h, w): the conditioning latent(s) concatenated to the noisy latent's channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from priorswap import Denoiser, DiscreteSchedule, LoadRequest, PriorswapError
from priorswap.configs import read_json
from priorswap.errors import WeightsUnavailable
from priorswap.hub import folders_on_demand, load_component
from priorswap.nullcache import cached_null
from priorswap.text_encoders import ClipTextEncoder

from .presets import LVDM_CONFIG, RECOMMENDED
from .resampler import Resampler
from .unet3d import UNet3D

PIPELINE_CLASSES = {"DynamiCrafterPipeline": "dynamicrafter", "VideoCrafterPipeline": "videocrafter"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def scale_table(base_scale: float) -> np.ndarray:
    """The lvdm per-timestep latent scale: linspace(1, base, 400) then `base` (1400 entries, float64)."""
    return np.concatenate([np.linspace(1.0, base_scale, 400), np.full(1000, base_scale)])


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise WeightsUnavailable(f"{path} does not exist; is {path.parent.parent} a DynamiCrafter/VideoCrafter folder?")
    return read_json(path)


def load_module(cls: type, folder: Path, name: str, dtype: torch.dtype | None) -> torch.nn.Module:
    """`cls(**<name>/config.json)` with `<name>/model.safetensors` loaded strictly."""
    config = _read_json(folder / name / "config.json")
    weights = folder / name / "model.safetensors"
    if not weights.is_file():
        raise WeightsUnavailable(f"{weights} does not exist; convert the released checkpoint with convert.save_folder")
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # no random init of weights about to be replaced
        module = cls(**{k: v for k, v in config.items() if not k.startswith("_")})
    module.load_state_dict(load_file(weights), assign=True)  # the file's tensors, in the file's dtype
    return module.to(dtype or torch.get_default_dtype())


class LvdmDenoiser(Denoiser):
    """The lvdm 3-D UNet on video latents (B, C, T, h, w) in σ-space."""

    modality = "video"

    def __init__(self, unet: UNet3D, scheduler_config: dict, lvdm: dict, request: LoadRequest) -> None:
        self.net = unet.eval().requires_grad_(False)
        self.folder = Path(request.folder)
        self.request = request
        self.allow_pickle = request.allow_pickle
        self.latent_space = request.latent_space
        self.scheduler_config = dict(scheduler_config)
        self.schedule = DiscreteSchedule.from_scheduler_config(self.scheduler_config)
        self.parameterization = self.scheduler_config.get("prediction_type", "epsilon")
        self.lvdm = lvdm
        self.resolution = request.entry.resolution
        self.height = int(lvdm.get("height", self.resolution))
        self.width = int(lvdm.get("width", self.resolution))
        self.frames = int(lvdm.get("frames", 16))
        self.default_fs = int(lvdm.get("default_fs", 16))
        kind = lvdm.get("latent_rescale")
        if kind not in (None, "dynamic", "use_scale"):
            raise PriorswapError(
                f"{self.folder}: unknown latent_rescale {kind!r} in {LVDM_CONFIG} (expected dynamic, use_scale or null)"
            )
        self.latent_rescale = kind
        self.scale_arr = scale_table(float(lvdm["base_scale"])) if kind else None
        # the official DynamiCrafter sampler rescales the guided v (or ε), not x̂0
        self.rescale_space = "output"
        param = next(unet.parameters())
        self.dtype, self.device = param.dtype, param.device
        self._text: ClipTextEncoder | None = None
        self._empty: torch.Tensor | None = None

    # -- the network ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        if "concat" in cond:
            concat = cond["concat"].to(x.device, x.dtype)
            if concat.shape[2:] != x.shape[2:]:
                raise PriorswapError(
                    f"the conditioning latent is {tuple(concat.shape[2:])} (T, h, w) but the noisy latent is "
                    f"{tuple(x.shape[2:])}"
                )
            x = torch.cat([x, concat], dim=1)
        fs = cond.get("fs")
        return self.net(x, t, cond["context"].to(x.device, x.dtype), fs=None if fs is None else fs.to(x.device))

    def x0_step_scale(self, t: float, t_prev: float | None) -> float:
        """DynamiCrafter: x̂0·s[t_prev]/s[t] (1 on the last step); VideoCrafter2: x̂0/s[t], then ·s[t_prev]
        with s[0] = 1 on the last step."""
        if self.scale_arr is None:
            return 1.0
        s_t = float(self.scale_arr[int(round(t))])
        if t_prev is None:
            return 1.0 if self.latent_rescale == "dynamic" else float(self.scale_arr[0]) / s_t
        return float(self.scale_arr[int(round(t_prev))]) / s_t

    def fs_tensor(self, fs: int | None, batch: int = 1) -> torch.Tensor:
        return torch.full((batch,), self.default_fs if fs is None else int(fs), dtype=torch.long, device=self.device)

    # -- text ----------------------------------------------------------------------------------------
    @property
    def text(self) -> ClipTextEncoder:
        """The text encoder (fetched and loaded on the first prompt that is not cached)."""
        if self._text is None:
            self._text = ClipTextEncoder(
                lambda: folders_on_demand(self.request, ["text_encoder", "tokenizer"], "encoding prompts"),
                allow_pickle=self.allow_pickle, dtype=self.dtype, device=self.device,
                layer=self.lvdm.get("text_layer", "penultimate"),
            )
        return self._text

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """OpenCLIP-style text tokens (B, 77, D): the penultimate layer's hidden states + the final LayerNorm
        (or the last layer's, when the config says `text_layer: last`)."""
        return self.text.encode(prompts).to(self.device, self.dtype)

    def empty_prompt(self) -> torch.Tensor:
        """The encoding of "" (1, 77, D), cached on disk (the text encoder is then not loaded again)."""
        if self._empty is None:
            key = f"text:{self.lvdm.get('text_layer', 'penultimate')}:{str(self.dtype).removeprefix('torch.')}"
            self._empty = cached_null(self.folder, key, lambda: self.encode_prompts([""]))
            if self.request.role != "model" and self._text is not None:
                self._text.release()  # a prior needs its text encoder for "" only (autoguidance loads it again)
        return self._empty.to(self.device, self.dtype)

    def null_condition(self) -> dict:
        """Empty prompt at the default fs; what the prior contributes ε(∅) with (no image, no concat)."""
        return {"context": self.empty_prompt(), "fs": self.fs_tensor(None)}


class VideoCrafterDenoiser(LvdmDenoiser):
    """VideoCrafter2 text-to-video (ε, fps-conditioned, `use_scale` latents)."""


class DynamiCrafterDenoiser(LvdmDenoiser):
    """DynamiCrafter: UNet3D with concat image-latent channels and image cross-attention (Resampler tokens)."""

    def __init__(self, unet: UNet3D, image_proj: Resampler, scheduler_config: dict, lvdm: dict, request) -> None:
        super().__init__(unet, scheduler_config, lvdm, request)
        self.image_proj = image_proj.eval().requires_grad_(False)
        self.interpolation = bool(lvdm.get("interpolation", False))
        self._vision = None

    def offload_modules(self) -> list[torch.nn.Module]:
        """The UNet and the image projection, which runs on the device in `encode_image_tokens`."""
        return [self.net, self.image_proj]

    def _image_encoder(self):
        if self._vision is None:
            from transformers import CLIPVisionModelWithProjection

            encoder = load_component(
                CLIPVisionModelWithProjection, self.folder, "image_encoder", allow_pickle=self.allow_pickle,
                dtype=self.dtype,
            ).to(self.device)
            self._vision = encoder.eval().requires_grad_(False)
        return self._vision

    @torch.no_grad()
    def encode_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Resampler tokens (B, 16·video_length, D) of images in [-1, 1] (B, 3, H, W): CLIP ViT token output
        (all tokens, before the post-LayerNorm and projection), as the official FrozenOpenCLIPImageEmbedderV2."""
        encoder = self._image_encoder()
        size = encoder.config.image_size
        x = torch.nn.functional.interpolate(
            images.float(), size=(size, size), mode="bicubic", align_corners=True, antialias=True
        )
        x = (x + 1.0) / 2.0
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.device, self.dtype)
        tokens = encoder.vision_model(pixel_values=x).last_hidden_state  # before post_layernorm
        return self.image_proj(tokens).to(self.device, self.dtype)

    def null_condition(self) -> dict:
        raise PriorswapError(
            "a DynamiCrafter model's null condition keeps the conditioning image's latent; the image-to-video "
            "task builds it. DynamiCrafter cannot serve as a prior."
        )


def read_lvdm_config(folder: Path) -> dict:
    return _read_json(folder / "scheduler" / LVDM_CONFIG)


def load(request: LoadRequest) -> LvdmDenoiser:
    """Builds the denoiser from a converted folder (see the module docstring)."""
    folder = Path(request.folder)
    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    lvdm = read_lvdm_config(folder)
    unet = load_module(UNet3D, folder, "unet", request.dtype).to(request.device)
    if (folder / "image_proj").is_dir():
        proj = load_module(Resampler, folder, "image_proj", request.dtype).to(request.device)
        return DynamiCrafterDenoiser(unet, proj, scheduler_config, lvdm, request)
    return VideoCrafterDenoiser(unet, scheduler_config, lvdm, request)


def describe(folder: Path) -> dict:
    """Registry-entry fields for a local converted folder."""
    from priorswap.loading import schedule_fields
    from priorswap.vae import describe_vae

    index = _read_json(folder / "model_index.json")
    family = PIPELINE_CLASSES.get(index.get("_class_name", ""))
    scfg = _read_json(folder / "scheduler" / "scheduler_config.json")
    lvdm = read_lvdm_config(folder)
    space = describe_vae(folder / "vae") if (folder / "vae").is_dir() else "sd-kl-f8"
    video_prior = family == "videocrafter"
    return {
        "roles": ["model", "prior"] if video_prior else ["model"],
        "latent_space": space,
        "schedule": schedule_fields(scfg),
        "parameterization": scfg.get("prediction_type", "epsilon"),
        "modality": "video",
        "resolution": int(max(lvdm.get("height", 256), lvdm.get("width", 256))),
        "task": "text-to-video" if video_prior else "image-to-video",
        "recommended": RECOMMENDED[family or "dynamicrafter"],
        "description": f"local {index.get('_class_name')} folder {folder.name}",
    }
