"""Tasks of the toy zoo: class-conditional digits, novel view (rotation) and instruction edits.

Sources for the view and edit tasks are held-out digits (`source_index` into the test split of
`data.load_digits16`) or PNG files (`image`: white digit on black, resized to 16×16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field, model_validator

from priorswap import Denoiser, PriorswapError, Task, TaskInputs
from priorswap.task import ImageFile

from . import data, models

TEST_DIGITS = 360
"""Held-out digits of `data.load_digits16("test")` (20 % of scikit-learn's 1,797, rounded up): the range of
`source_index`, known without reading the data."""


def _decode(latents: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixels → [0, 1] RGB (the gray channel repeated)."""
    return ((latents.float().clamp(-1, 1) + 1) / 2).repeat(1, 3, 1, 1)


def _toy(denoiser: Denoiser, what: str):
    from .denoisers import ToyDenoiser

    if not isinstance(denoiser, ToyDenoiser) or denoiser.unconditional:
        raise PriorswapError(
            f"{type(denoiser).__name__} takes no {what} (only the matching fine-tuned toy model does; "
            "autoguidance needs a conditional model as the weaker one)"
        )
    return denoiser


BACKGROUND = 0
"""The toy digits are light on black: transparent pixels of a source image are composited onto black."""


def load_png(path: str | Path) -> torch.Tensor:
    """An image file as a (1, 1, 16, 16) digit in [-1, 1] (bright strokes on a dark background; 16-bit images
    scaled to 8 bits, transparent pixels black, by `priorswap.images.open_image`).

    Raises a PriorswapError naming the file when it is missing, a folder or not an image."""
    from PIL import Image

    from priorswap.images import open_image

    if Path(path).expanduser().is_dir():
        raise PriorswapError(f"image {path} is a folder; give an image file (a light digit on a dark background)")
    gray = open_image(path, "L", BACKGROUND).resize((data.SIZE, data.SIZE), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(gray, dtype=np.float32).copy()).view(1, 1, data.SIZE, data.SIZE)
    return pixels / 127.5 - 1


class SourceInputs(TaskInputs):
    source_index: list[Annotated[int, Field(ge=0, lt=TEST_DIGITS)]] = Field(
        default_factory=list, description=f"held-out test digits (indices 0–{TEST_DIGITS - 1})")
    image: list[ImageFile] = Field(default_factory=list, description="PNG file(s) of source digits (light on dark)")

    @model_validator(mode="after")
    def _some_source(self):
        if not self.source_index and not self.image:
            raise ValueError("give at least one source: source_index or image")
        return self

    def sources(self, device: torch.device | str = "cpu") -> torch.Tensor:
        images, _ = data.load_digits16("test")
        bad = [i for i in self.source_index if not 0 <= i < len(images)]
        if bad:
            raise PriorswapError(f"source_index must be in [0, {len(images) - 1}], got {bad}")
        parts = [images[self.source_index]] if self.source_index else []
        parts += [load_png(p) for p in self.image]
        return torch.cat(parts).to(device)

    def count(self) -> int:
        return len(self.source_index) + len(self.image)


# ---- toy-class ----------------------------------------------------------------------------------
class ToyClassInputs(TaskInputs):
    class_label: list[Annotated[int, Field(ge=0, lt=models.NUM_CLASSES)]] = Field(
        ..., min_length=1, description="digit(s) 0–9; one sample per label")


class ToyClassTask(Task):
    """One sample per requested digit class (null class 10)."""

    name = "toy-class"
    Inputs = ToyClassInputs

    def batch_size(self, inputs: ToyClassInputs) -> int:
        return len(inputs.class_label)

    def conditions(self, inputs: ToyClassInputs, denoiser: Denoiser) -> dict:
        toy = _toy(denoiser, "class labels")
        if toy.null_class != models.CLASS_NULL:
            raise PriorswapError(f"{type(denoiser).__name__} is not a class-conditional toy model")
        labels = torch.tensor(inputs.class_label, device=toy.device)
        if int(labels.min()) < 0 or int(labels.max()) >= models.NUM_CLASSES:
            raise PriorswapError(f"class labels must be digits 0–9, got {inputs.class_label}")
        return {"full": {"class_labels": labels}, "null": toy.null_condition()}

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return _decode(latents)


# ---- toy-view -----------------------------------------------------------------------------------
class ToyViewInputs(SourceInputs):
    angle: float = Field(0.0, ge=-90.0, le=90.0, description="rotation in degrees, counter-clockwise (trained: ±40)")


class ToyViewTask(Task):
    """The source digit rotated by `angle` (the Zero-1-to-3 shape: concat source + pose embedding).
    Null: a zero source image and the null angle."""

    name = "toy-view"
    Inputs = ToyViewInputs
    metrics = ("psnr", "ssim")  # `priorswap eval --data DIR` against the true rotated digits (offline)
    image_background = BACKGROUND

    def batch_size(self, inputs: ToyViewInputs) -> int:
        return inputs.count()

    def conditions(self, inputs: ToyViewInputs, denoiser: Denoiser) -> dict:
        toy = _toy(denoiser, "source image and angle")
        if not toy.angle:
            raise PriorswapError(f"{type(denoiser).__name__} is not the toy view model")
        src = inputs.sources(toy.device).to(toy.dtype)
        angle = models.angle_value(inputs.angle).expand(len(src)).to(toy.device)
        return {"full": {"image": src, "class_labels": angle}, "null": toy.null_condition()}

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return _decode(latents)


# ---- toy-edit -----------------------------------------------------------------------------------
class ToyEditInputs(SourceInputs):
    instruction: str = Field("keep", description="one of: " + ", ".join(data.INSTRUCTIONS))

    @model_validator(mode="after")
    def _known(self):
        data.instruction_id(self.instruction)
        return self


class ToyEditTask(Task):
    """The source digit edited by an instruction (the InstructPix2Pix shape, dual guidance):
    full = image + instruction, partial = image only (null instruction 3), null = zero image and
    null instruction."""

    name = "toy-edit"
    Inputs = ToyEditInputs
    levels = ("full", "partial", "null")
    image_background = BACKGROUND

    def batch_size(self, inputs: ToyEditInputs) -> int:
        return inputs.count()

    def conditions(self, inputs: ToyEditInputs, denoiser: Denoiser) -> dict:
        toy = _toy(denoiser, "source image and instruction")
        if toy.null_class != models.EDIT_NULL or not toy.concat_channels:
            raise PriorswapError(f"{type(denoiser).__name__} is not the toy edit model")
        src = inputs.sources(toy.device).to(toy.dtype)
        n = len(src)
        instr = torch.full((n,), data.instruction_id(inputs.instruction), device=toy.device)
        null_instr = torch.full((n,), models.EDIT_NULL, device=toy.device)
        return {
            "full": {"image": src, "class_labels": instr},
            "partial": {"image": src, "class_labels": null_instr},
            "null": toy.null_condition(),
        }

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return _decode(latents)
