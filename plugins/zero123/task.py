"""Novel view synthesis (Zero-1-to-3): a source image and a relative camera move → the object seen from there.

Conditioning recipe (the reference community pipeline, `examples/community/pipeline_zero1to3.py`):
- the image, resized to the model resolution, in [-1, 1];
- CLIP path: bicubic resize to 224×224 with align_corners=True (no antialias), then (x + 1)/2 and the
  CLIP mean/std; `image_embeds` of CLIPVisionModelWithProjection (not L2-normalised);
- pose [deg2rad(polar), sin(deg2rad(azimuth)), cos(deg2rad(azimuth)), radius], float32;
- context = cc_projection(concat(image_embeds, pose)): one cross-attention token;
- image latents = the VAE posterior mode, unscaled (no scaling_factor);
- null: zero image latents and a zero context (zeros after the projection, not cc_projection(0)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from priorswap import Denoiser, PriorswapError, Task, TaskInputs
from priorswap.images import load_image
from priorswap.task import ImageFile

CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class NovelViewInputs(TaskInputs):
    image: ImageFile = Field(..., description="source image file (an object, ideally on a white background)")
    azimuth: float = Field(..., allow_inf_nan=False, description="azimuth change in degrees (positive: rotate right)")
    polar: float = Field(..., allow_inf_nan=False,
                         description="polar-angle change in degrees (90° − elevation; positive: camera moves down)")
    radius: float = Field(0.0, allow_inf_nan=False, description="change of camera distance (Zero-1-to-3 units)")
    count: int = Field(1, ge=1, le=64, description="how many samples of this view (batch size)")


class StableNovelViewInputs(TaskInputs):
    image: ImageFile = Field(..., description="source image file (an object, ideally on a white background)")
    azimuth: float = Field(..., allow_inf_nan=False, description="azimuth change in degrees (positive: rotate right)")
    polar: float = Field(..., allow_inf_nan=False,
                         description="polar-angle change in degrees (90° − elevation; positive: camera moves down)")
    input_elevation: float = Field(0.0, allow_inf_nan=False, description="elevation of the source view in degrees")
    count: int = Field(1, ge=1, le=64, description="how many samples of this view (batch size)")


def pose_vector(polar: float, azimuth: float, radius: float) -> torch.Tensor:
    """Zero-1-to-3's camera vector (1, 4): [polar in radians, sin azimuth, cos azimuth, radius], float32."""
    polar_t = torch.deg2rad(torch.tensor([polar], dtype=torch.float32))
    azimuth_t = torch.deg2rad(torch.tensor([azimuth], dtype=torch.float32))
    radius_t = torch.tensor([radius], dtype=torch.float32)
    return torch.stack([polar_t, torch.sin(azimuth_t), torch.cos(azimuth_t), radius_t], dim=-1)


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → CLIP ViT input as the reference computes it (OpenAI-style, not CLIPImageProcessor)."""
    x = F.interpolate(images.float(), (CLIP_SIZE, CLIP_SIZE), mode="bicubic", align_corners=True)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(images.dtype)


@torch.no_grad()
def encode(denoiser: Denoiser, image: torch.Tensor, pose: torch.Tensor) -> dict[str, torch.Tensor]:
    """The full condition for one source image (1, 3, H, W) in [-1, 1] and pose (1, 4), batch 1:
    `image_latents` (unscaled VAE mode) and `encoder_hidden_states` (cc_projection of image embeds + pose)."""
    parts = getattr(denoiser, "conditioner", None)
    if parts is None:
        raise PriorswapError(
            f"{type(denoiser).__name__} takes no source image and pose (only a Zero-1-to-3 model does; "
            "autoguidance needs a weaker Zero-1-to-3 model as the prior)"
        )
    image = image.to(parts.device, parts.dtype)
    embeds = parts.image_encoder(clip_pixels(image)).image_embeds.to(parts.dtype).unsqueeze(1)
    context = parts.cc_projection(torch.cat([embeds, pose.to(parts.device, parts.dtype).unsqueeze(1)], dim=-1))
    latents = parts.vae.encode(image, scaled=False)
    return {
        "image_latents": latents.to(denoiser.device, denoiser.dtype),
        "encoder_hidden_states": context.to(denoiser.device, denoiser.dtype),
    }


class NovelViewTask(Task):
    """The source object seen after a relative camera move; `count` samples of that view."""

    name = "novel-view"
    Inputs = NovelViewInputs
    metrics = ("psnr", "ssim", "lpips")

    def batch_size(self, inputs: NovelViewInputs) -> int:
        return inputs.count

    def pose(self, inputs: TaskInputs) -> torch.Tensor:
        return pose_vector(inputs.polar, inputs.azimuth, inputs.radius)

    def conditions(self, inputs: NovelViewInputs, denoiser: Denoiser) -> dict:
        image = load_image(inputs.image, self.model.resolution)
        full = encode(denoiser, image, self.pose(inputs))
        null = {k: torch.zeros_like(v) for k, v in full.items()}
        return {"full": {k: v.expand(inputs.count, *v.shape[1:]) for k, v in full.items()}, "null": null}

    def decode(self, latents: torch.Tensor) -> torch.Tensor | None:
        parts = getattr(self.model, "conditioner", None)
        return parts.vae.decode(latents.to(parts.device)) if parts is not None else None


class StableNovelViewTask(NovelViewTask):
    """Stable Zero123: the pose's last entry is the source view's polar angle in radians,
    deg2rad(90° − input elevation), instead of a distance change (as threestudio and ComfyUI build it)."""

    name = "novel-view-stable"
    Inputs = StableNovelViewInputs

    def pose(self, inputs: TaskInputs) -> torch.Tensor:
        vector = pose_vector(inputs.polar, inputs.azimuth, 0.0)
        vector[:, 3] = torch.deg2rad(torch.tensor(90.0 - inputs.input_elevation, dtype=torch.float32))
        return vector
