"""Instruction-based image editing: a source image and an edit instruction, dual guidance.

Levels, as diffusers' StableDiffusionInstructPix2PixPipeline batches them:
full = (image latent, prompt), partial = (image latent, ""), null = (zero image latent, "").
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pydantic import Field

from priorswap import Denoiser, PriorswapError, Task, TaskInputs
from priorswap.images import open_image
from priorswap.task import ImageFile, Prompts
from priorswap.vae import VaeDecoder


class InstructPix2PixInputs(TaskInputs):
    image: ImageFile = Field(..., description="the image to edit (PNG, JPEG, ...)")
    prompt: Prompts = Field(..., description="edit instruction(s); one sample per instruction")
    resolution: int | None = Field(
        None,
        ge=0,
        description="longest side of the edited image in pixels (aspect kept; default: the model's resolution; "
        "0: the image's own size, as diffusers' pipeline does)",
    )


def target_size(width: int, height: int, longest: int, multiple: int) -> tuple[int, int]:
    """(height, width): scaled so the longer side is `longest` (0: unscaled), each side then rounded
    down to a multiple of `multiple` (the VAE's downsampling), as VaeImageProcessor does."""
    if longest:
        scale = longest / max(width, height)
        width, height = round(width * scale), round(height * scale)
    height, width = height - height % multiple, width - width % multiple
    if height <= 0 or width <= 0:
        raise PriorswapError(f"the image is too small: it needs at least {multiple} pixels on each side")
    return height, width


def read_image(path: Path, longest: int, multiple: int) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]: the file resized (Lanczos) and normalised by diffusers' VaeImageProcessor,
    the preprocessing of the InstructPix2Pix pipeline."""
    from diffusers.image_processor import VaeImageProcessor

    img = open_image(path)
    height, width = target_size(img.width, img.height, longest, multiple)
    return VaeImageProcessor(vae_scale_factor=multiple).preprocess(img, height=height, width=width)


class InstructPix2PixTask(Task):
    """Edits one source image with each instruction; the source latent is the VAE posterior mode,
    unscaled (the pipeline's `vae.encode(image).latent_dist.mode()`), concatenated to the noisy latent."""

    name = "instruct-pix2pix"
    Inputs = InstructPix2PixInputs
    levels = ("full", "partial", "null")
    metrics = ("clip-image", "clip-text", "clip-direction")

    def __init__(self, model: Denoiser, folder: object = None) -> None:
        super().__init__(model, folder)
        if folder is None or not (Path(folder) / "vae").is_dir():
            raise PriorswapError(f"{folder}: an InstructPix2Pix model needs its vae/ folder to encode the source image")
        from diffusers import AutoencoderKL

        from priorswap.hub import load_component

        vae = load_component(
            AutoencoderKL, Path(folder), "vae", allow_pickle=getattr(model, "allow_pickle", False), dtype=model.dtype
        ).to(model.device)
        self.vae = VaeDecoder(vae, model.latent_space)
        self._source: tuple[tuple, torch.Tensor] | None = None

    def batch_size(self, inputs: InstructPix2PixInputs) -> int:
        return len(inputs.prompt)

    def source_latents(self, inputs: InstructPix2PixInputs) -> torch.Tensor:
        """The source image's raw VAE latent (1, C, h, w), computed once per file and size."""
        path = Path(inputs.image).expanduser()
        longest = self.model.resolution if inputs.resolution is None else inputs.resolution
        stat = os.stat(path) if path.is_file() else None
        key = (str(path.resolve()), stat and (stat.st_size, stat.st_mtime_ns), longest)
        if self._source is None or self._source[0] != key:
            image = read_image(path, longest, self.model.latent_space.downsample)
            self._source = (key, self.vae.encode(image, scaled=False))
        return self._source[1]

    def conditions(self, inputs: InstructPix2PixInputs, denoiser: Denoiser) -> dict:
        if not hasattr(denoiser, "encode_prompts"):
            raise PriorswapError(f"{type(denoiser).__name__} is not an InstructPix2Pix model: it takes no source image")
        image = self.source_latents(inputs).to(denoiser.device, denoiser.dtype)
        empty = denoiser.empty_prompt()
        return {
            "full": {"encoder_hidden_states": denoiser.encode_prompts(inputs.prompt), "image_latents": image},
            "partial": {"encoder_hidden_states": empty, "image_latents": image},
            "null": {"encoder_hidden_states": empty, "image_latents": torch.zeros_like(image)},
        }

    def latent_shape(self, inputs: InstructPix2PixInputs) -> tuple[int, ...]:
        height, width = self.source_latents(inputs).shape[-2:]
        return (self.batch_size(inputs), self.model.latent_space.channels, height, width)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents)
