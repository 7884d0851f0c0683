"""Image variation (Versatile Diffusion): new images with the content and style of a source image.

Levels: full = the CLIP image tokens of the source image, null = those of a blank image (the model's
`null_condition()`), as `VersatileDiffusionImageVariationPipeline` batches them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from priorswap import Denoiser, PriorswapError, Task, TaskInputs
from priorswap.images import open_image
from priorswap.task import ImageFile
from priorswap.vae import VaeDecoder


class ImageVariationInputs(TaskInputs):
    image: ImageFile = Field(..., description="the source image (PNG, JPEG, ...)")
    count: int = Field(1, ge=1, le=64, description="how many variations of the image (batch size)")


def read_image(path: Path):
    """The file as a PIL image, unconverted: the CLIP processor converts it to RGB as the pipeline's does."""
    return open_image(path, mode=None)


class ImageVariationTask(Task):
    """`count` variations of one source image; decodes with the model folder's VAE."""

    name = "image-variation"
    Inputs = ImageVariationInputs
    levels = ("full", "null")
    metrics = ("fid", "fd-clip", "clip-image")

    def __init__(self, model: Denoiser, folder: object = None) -> None:
        super().__init__(model, folder)
        self.decoder: VaeDecoder | None = None
        if folder is not None and (Path(folder) / "vae").is_dir():
            from diffusers import AutoencoderKL

            from priorswap.hub import load_component

            vae = load_component(
                AutoencoderKL, Path(folder), "vae", allow_pickle=getattr(model, "allow_pickle", False),
                dtype=model.dtype,
            ).to(model.device)
            self.decoder = VaeDecoder(vae, model.latent_space)

    def batch_size(self, inputs: ImageVariationInputs) -> int:
        return inputs.count

    def conditions(self, inputs: ImageVariationInputs, denoiser: Denoiser) -> dict:
        if not hasattr(denoiser, "encode_images"):
            raise PriorswapError(
                f"{type(denoiser).__name__} takes no source image (only a Versatile Diffusion model does; "
                "autoguidance needs a weaker Versatile Diffusion model as the prior)"
            )
        tokens = denoiser.encode_images([read_image(inputs.image)])
        return {
            "full": {"encoder_hidden_states": tokens.expand(inputs.count, *tokens.shape[1:])},
            "null": denoiser.null_condition(),
        }

    def can_decode(self) -> bool:
        return self.decoder is not None

    def decode(self, latents: torch.Tensor) -> torch.Tensor | None:
        if self.decoder is None:
            return None
        return self.decoder.decode(latents.to(self.decoder.vae.device))
