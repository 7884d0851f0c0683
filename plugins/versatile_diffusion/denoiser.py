"""Versatile Diffusion's image-variation UNet as a σ-space denoiser, with the pipeline's image conditioning.

The condition is what `VersatileDiffusionImageVariationPipeline._encode_prompt` computes: the source image through
the CLIPImageProcessor, then *all* tokens of CLIPVisionModelWithProjection, each post-layernormed and projected,
divided by the norm of the projected class token. The null condition is the same encoding of the pipeline's blank
image, a 512×512×3 float array of 0.5. The processor rescales it by 1/255 like 8-bit pixels, so CLIP sees an almost
black image (0.002), close to the black image the original VD code encodes. It is computed once per folder, dtype
and transformers version (the processor's handling of float arrays is what makes it), and cached on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from priorswap import Denoiser, LoadRequest, PriorswapError
from priorswap.configs import read_json
from priorswap.denoiser import execution_device
from priorswap.errors import WeightsUnavailable
from priorswap.hub import folders_on_demand, load_component
from priorswap.nullcache import cached_null
from priorswap.vae import describe_vae

ENCODER_FOLDERS = ["image_encoder", "image_feature_extractor"]
BLANK_SIZE = 512  # the pipeline's unconditional image: np.zeros((512, 512, 3)) + 0.5
NULL_KEY = f"versatile-diffusion:clip-image-tokens:blank-{BLANK_SIZE}x{BLANK_SIZE}x3=0.5"
DEFAULT_LATENT_SIZE = 64  # VD was trained at 512×512 (64×64 latents); used when image_unet has no sample_size


def blank_image() -> Any:
    """The pipeline's unconditional image prompt, before the CLIP processor (which rescales it by 1/255)."""
    import numpy as np

    return np.zeros((BLANK_SIZE, BLANK_SIZE, 3)) + 0.5


class ImageEncoder:
    """CLIP image tokens as the image-variation pipeline computes them. The processor and the encoder load on
    first use from the folder `locate()` returns (which holds image_encoder/ and image_feature_extractor/)."""

    def __init__(
        self, locate: Callable[[], Path], allow_pickle: bool = False, dtype: Any = None, device: Any = "cpu"
    ) -> None:
        self.locate = locate
        self.allow_pickle = allow_pickle
        self.dtype = dtype
        self.device = device
        self._parts: tuple[Any, Any] | None = None

    def parts(self) -> tuple[Any, Any]:
        """(CLIPImageProcessor, CLIPVisionModelWithProjection), loaded once."""
        if self._parts is None:
            from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

            folder = self.locate()
            if not (folder / "image_feature_extractor").is_dir():
                raise PriorswapError(f"{folder} has no 'image_feature_extractor' folder (the CLIP image processor)")
            processor = CLIPImageProcessor.from_pretrained(folder, subfolder="image_feature_extractor")
            encoder = load_component(
                CLIPVisionModelWithProjection, folder, "image_encoder", allow_pickle=self.allow_pickle, dtype=self.dtype
            )
            device = self.device() if callable(self.device) else self.device
            self._parts = (processor, encoder.eval().requires_grad_(False).to(device))
        return self._parts

    def release(self) -> None:
        """Drops the encoder (a prior needs it only to compute its null condition); it reloads on next use."""
        self._parts = None

    @torch.no_grad()
    def encode(self, images: list) -> torch.Tensor:
        """(B, tokens, D) for a list of PIL images (or arrays): processor → encoder → post-layernorm →
        projection → divided by the norm of the projected class token, in the encoder's dtype."""
        processor, encoder = self.parts()
        pixels = processor(images=images, return_tensors="pt").pixel_values.to(execution_device(encoder), encoder.dtype)
        hidden = encoder(pixels).last_hidden_state
        tokens = encoder.visual_projection(encoder.vision_model.post_layernorm(hidden))
        return tokens / tokens[:, :1].norm(dim=-1, keepdim=True)

    def blank(self) -> torch.Tensor:
        """The null condition: the encoding of the blank image, (1, tokens, D)."""
        return self.encode([blank_image()])


class VersatileDiffusionDenoiser(Denoiser):
    """UNet2DConditionModel (`image_unet`); conditions are CLIP image tokens (`encoder_hidden_states`)."""

    def __init__(
        self, unet, encoder: ImageEncoder, null: torch.Tensor, scheduler_config: dict, request: LoadRequest
    ) -> None:
        self.init_discrete(unet, scheduler_config, request)
        self.encoder = encoder
        encoder.device = lambda: self.device  # a later (re)load goes where the UNet runs (offload included)
        self.null_embedding = null.to(unet.device, unet.dtype)
        self.allow_pickle = request.allow_pickle

    def offload_modules(self) -> list[torch.nn.Module]:
        """The UNet, and the CLIP image encoder when loaded (a model's, which encodes every source image)."""
        loaded = self.encoder._parts
        return [self.net, *([loaded[1]] if loaded is not None else [])]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.net(x, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample

    def null_condition(self) -> dict:
        return {"encoder_hidden_states": self.null_embedding}

    def encode_images(self, images: list) -> torch.Tensor:
        """CLIP image tokens of `images` (PIL), on this denoiser's device and in its dtype."""
        return self.encoder.encode(images).to(self.device, self.dtype)


def encoder_folder(request: LoadRequest) -> Path:
    """A folder with the CLIP image encoder and processor: for a hub prior they are fetched now (first use)."""
    try:
        return folders_on_demand(request, ENCODER_FOLDERS, "the CLIP image encoder")
    except WeightsUnavailable as e:
        raise PriorswapError(
            f"{e}: Versatile Diffusion's image conditions (and its null condition, the encoding of a blank "
            "image, until it is cached) need the CLIP image encoder"
        ) from None


def load(request: LoadRequest) -> VersatileDiffusionDenoiser:
    from diffusers import UNet2DConditionModel

    folder = request.folder
    unet = load_component(
        UNet2DConditionModel, folder, "image_unet", allow_pickle=request.allow_pickle, dtype=request.dtype
    ).to(request.device)
    encoder = ImageEncoder(lambda: encoder_folder(request), request.allow_pickle, unet.dtype, request.device)
    if request.role == "model":
        encoder.parts()  # the model encodes every source image: load it now, so that errors show at load time
    import transformers

    key = f"{NULL_KEY}:{unet.dtype}:transformers-{transformers.__version__}"
    null = cached_null(folder / "image_unet", key, encoder.blank)
    if request.role != "model":
        encoder.release()  # a prior costs only its UNet; autoguidance would load the encoder again
    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json", optional=True)
    if not scheduler_config:
        raise PriorswapError(f"{folder} has no scheduler/scheduler_config.json (the training noise schedule)")
    return VersatileDiffusionDenoiser(unet, encoder, null, scheduler_config, request)


def describe(folder: Path) -> dict:
    """Registry-entry fields for a local Versatile Diffusion folder (image-variation layout or a full snapshot)."""
    from priorswap.loading import schedule_fields

    if not (folder / "vae" / "config.json").is_file():
        raise PriorswapError(
            f"{folder} has no vae/config.json, so its latent space is unknown: add a registry entry for it "
            "with `latent_space` (see docs/registry.md)"
        )
    ucfg = read_json(folder / "image_unet" / "config.json", optional=True)
    if not ucfg:
        raise PriorswapError(f"{folder} has no image_unet/config.json: it is not a Versatile Diffusion folder")
    scfg = read_json(folder / "scheduler" / "scheduler_config.json", optional=True)
    space = describe_vae(folder / "vae")
    size = ucfg.get("sample_size") or DEFAULT_LATENT_SIZE
    size = size[0] if isinstance(size, list) else size
    return {
        "latent_space": space,
        "schedule": schedule_fields(scfg),
        "parameterization": scfg.get("prediction_type", "epsilon"),
        "resolution": size * space["downsample"],
        "recommended": {"steps": 50, "guidance": 2.0, "scheduler": "ddim"},
        "description": f"local Versatile Diffusion folder {folder.name} (image variation)",
    }
