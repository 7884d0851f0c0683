"""Image-to-video (DynamiCrafter, incl. interpolation) and text-to-video (VideoCrafter2) tasks.

Image-to-video levels, as the official dual-guidance sampler composes them (every level keeps the
conditioning latent in the concat channels):
full = (prompt, image tokens), partial = ("" , image tokens), null = ("", tokens of an all-zero image).
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from priorswap import Denoiser, PriorswapError, Task, TaskInputs
from priorswap.checks import MAX_SEED
from priorswap.registry import ModelEntry
from priorswap.task import ImageFile, Prompts, model_file
from priorswap.vae import VaeDecoder

from .denoiser import DynamiCrafterDenoiser, LvdmDenoiser
from .presets import LVDM_CONFIG, PRESETS

MAX_FRAMES = 64  # 4× the 16 frames the released checkpoints were trained on; memory grows with every frame
MAX_FS = 1000  # a frame rate or frame stride: the released models use 3 to 28


def read_frame(path: Path, height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]: resized so it covers H×W (bicubic), then centre-cropped, as the official scripts."""
    from PIL import Image

    from priorswap.images import open_image, pil_to_tensor

    img = open_image(path)
    scale = max(height / img.height, width / img.width)
    w, h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    img = img.resize((w, h), Image.BICUBIC)
    left, top = (w - width) // 2, (h - height) // 2
    return pil_to_tensor(img.crop((left, top, left + width, top + height)))


class VideoTask(Task):
    """Shared: the VAE (frame by frame), the latent shape (B, C, T, h, w) and decoding."""

    def __init__(self, model: Denoiser, folder: object = None) -> None:
        super().__init__(model, folder)
        if not isinstance(model, LvdmDenoiser):
            raise PriorswapError(f"{type(model).__name__} is not a DynamiCrafter/VideoCrafter denoiser")
        self.vae = VaeDecoder.from_folder(Path(folder), model.latent_space, getattr(model, "allow_pickle", False))
        if self.vae is not None:
            self.vae.vae.to(model.device)

    def frames(self, inputs) -> int:
        return inputs.frames or self.model.frames

    def latent_shape(self, inputs) -> tuple[int, ...]:
        down = self.model.latent_space.downsample
        return (self.batch_size(inputs), self.model.latent_space.channels, self.frames(inputs),
                self.model.height // down, self.model.width // down)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Frames in [0, 1], (B, T, 3, H, W), decoded one frame at a time."""
        if self.vae is None:
            raise PriorswapError(f"{self.folder} has no vae/ folder: cannot decode the video")
        b, c, t, h, w = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        frames = torch.cat([self.vae.decode(flat[i : i + 1]) for i in range(b * t)])
        return frames.reshape(b, t, *frames.shape[1:])

    def can_decode(self) -> bool:
        return self.vae is not None

    def decode(self, latents: torch.Tensor) -> torch.Tensor | None:
        """A frame strip per sample, (B, 3, H, T·W), so image writers show the whole clip."""
        if self.vae is None:
            return None
        from .video import frame_strip

        return frame_strip(self.decode_video(latents))

    @torch.no_grad()
    def encode_frames(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Model-space latents (N, C, h, w) of images in [-1, 1] (N, 3, H, W), scaled: the posterior mode,
        or a draw from the posterior when `generator` is given (as the official scripts encode)."""
        if self.vae is None:
            raise PriorswapError(f"{self.folder} has no vae/ folder: cannot encode the conditioning image")
        return self.vae.encode(images.to(self.model.device), scaled=True, generator=generator).to(self.model.dtype)


class TextToVideoInputs(TaskInputs):
    prompt: Prompts = Field(..., description="text prompt(s); one video per prompt")
    frames: int | None = Field(None, gt=0, le=MAX_FRAMES, description="number of frames (default: the model's, 16)")
    fs: int | None = Field(None, gt=0, le=MAX_FS, description="frame-rate condition (default: the model's)")


class ImageToVideoInputs(TextToVideoInputs):
    image: ImageFile = Field(..., description="the first frame (PNG, JPEG, ...)")
    end_image: ImageFile | None = Field(None, description="the last frame (interpolation checkpoint only)")
    fs: int | None = Field(None, gt=0, le=MAX_FS, description="frame stride (256) or frame rate (512/1024) condition")
    posterior_seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="encode the frame(s) with a VAE posterior draw from this seed, as the "
        "official scripts do (default: the posterior mean, deterministic)"
    )


def interpolates(entry: ModelEntry) -> bool | None:
    """Whether the model is an interpolation checkpoint (first and last frame), read before its weights load:
    from its preset (`variant`), else from a local or cached folder's scheduler/lvdm_config.json; None when
    neither is at hand (the denoiser tells once loaded)."""
    if entry.variant in PRESETS:
        return bool(PRESETS[entry.variant]["lvdm"].get("interpolation", False))
    config = model_file(entry, f"scheduler/{LVDM_CONFIG}")
    if config is None:
        return None
    from priorswap.configs import read_json

    return bool(read_json(config).get("interpolation", False))


def check_end_image(end_image: object, interpolation: bool) -> None:
    """--end-image exactly with the interpolation checkpoint."""
    if end_image is not None and not interpolation:
        raise PriorswapError("--end-image needs the interpolation checkpoint (dynamicrafter-512-interp)")
    if interpolation and end_image is None:
        raise PriorswapError("the interpolation checkpoint needs a last frame: pass --end-image")


class ImageToVideoTask(VideoTask):
    """DynamiCrafter: animates an image (or interpolates between two) following a prompt, dual guidance."""

    name = "image-to-video"
    Inputs = ImageToVideoInputs
    levels = ("full", "partial", "null")

    @classmethod
    def check_inputs(cls, inputs: ImageToVideoInputs, entry: ModelEntry) -> None:
        """--end-image against the checkpoint (interpolation or not) when that is known before loading, and
        room for a first and a last frame."""
        interpolation = interpolates(entry)
        if interpolation is not None:
            check_end_image(inputs.end_image, interpolation)
        if inputs.end_image is not None and inputs.frames is not None and inputs.frames < 2:
            raise PriorswapError(f"--frames {inputs.frames} leaves no room for a first and a last frame: "
                                 "interpolation needs at least 2")

    def batch_size(self, inputs: ImageToVideoInputs) -> int:
        return len(inputs.prompt)

    def concat_latents(self, first: torch.Tensor, last: torch.Tensor | None, frames: int) -> torch.Tensor:
        """(1, C, T, h, w): the first-frame latent on every frame, or (interpolation) first and last frame
        latents with zeros between."""
        if last is None:
            return first[:, :, None].repeat(1, 1, frames, 1, 1)
        if frames < 2:
            raise PriorswapError(f"{frames} frame(s) leave no room for a first and a last frame: interpolation "
                                 "needs at least 2")
        out = torch.zeros(*first.shape[:2], frames, *first.shape[2:], dtype=first.dtype, device=first.device)
        out[:, :, 0], out[:, :, -1] = first, last
        return out

    def conditions(self, inputs: ImageToVideoInputs, denoiser: Denoiser) -> dict:
        if not isinstance(denoiser, DynamiCrafterDenoiser):
            if isinstance(denoiser, LvdmDenoiser):  # a text-to-video prior asked for its conditional branch
                return {"full": {"context": denoiser.encode_prompts(inputs.prompt), "fs": denoiser.fs_tensor(None)},
                        "null": denoiser.null_condition()}
            raise PriorswapError(f"{type(denoiser).__name__} cannot take the image-to-video conditions")
        check_end_image(inputs.end_image, denoiser.interpolation)
        h, w = denoiser.height, denoiser.width
        image = read_frame(inputs.image, h, w)
        generator = None if inputs.posterior_seed is None else torch.Generator().manual_seed(inputs.posterior_seed)
        first = self.encode_frames(image, generator)
        last = (self.encode_frames(read_frame(inputs.end_image, h, w), generator)
                if inputs.end_image is not None else None)
        concat = self.concat_latents(first, last, self.frames(inputs))
        tokens = denoiser.encode_image_tokens(image)
        zero_tokens = denoiser.encode_image_tokens(torch.zeros_like(image))
        empty = denoiser.empty_prompt()
        fs = denoiser.fs_tensor(inputs.fs)
        return {
            "full": {"context": torch.cat([denoiser.encode_prompts(inputs.prompt),
                                           tokens.expand(len(inputs.prompt), -1, -1)], 1),
                     "concat": concat, "fs": fs},
            "partial": {"context": torch.cat([empty, tokens], 1), "concat": concat, "fs": fs},
            "null": {"context": torch.cat([empty, zero_tokens], 1), "concat": concat, "fs": fs},
        }


class TextToVideoTask(VideoTask):
    """VideoCrafter2 text-to-video with CFG (the null branch is the empty prompt)."""

    name = "text-to-video"
    Inputs = TextToVideoInputs

    def batch_size(self, inputs: TextToVideoInputs) -> int:
        return len(inputs.prompt)

    def conditions(self, inputs: TextToVideoInputs, denoiser: Denoiser) -> dict:
        if not isinstance(denoiser, LvdmDenoiser) or isinstance(denoiser, DynamiCrafterDenoiser):
            raise PriorswapError(f"{type(denoiser).__name__} cannot take text-to-video conditions")
        fs = denoiser.fs_tensor(inputs.fs)
        return {"full": {"context": denoiser.encode_prompts(inputs.prompt), "fs": fs},
                "null": {"context": denoiser.empty_prompt(), "fs": fs}}
