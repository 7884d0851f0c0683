"""Tasks turn user inputs into conditions per guidance level and decode final latents."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar

import torch
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from .conditions import Condition
from .denoiser import Denoiser
from .guidance import Level
from .images import check_image_file

if TYPE_CHECKING:
    from .registry import ModelEntry


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


Prompts = Annotated[list[str], BeforeValidator(_one_or_many), Field(min_length=1)]
"""A task input of one or more prompts (a single string is a list of one); `--prompt` repeats on the CLI."""


ImageFile = Annotated[Path, AfterValidator(check_image_file)]
"""A task input naming an image file: it must exist and PIL must recognise its header (only the header is
read), so a mistyped `--image` is refused when the inputs validate, before any weights load."""


def model_file(entry: ModelEntry, relative: str) -> Path | None:
    """A file of the model's folder (e.g. "transformer/config.json") when it is on this machine without a
    download: in a local folder, or in the Hugging Face cache at the pinned revision; else None (not cached
    yet, or a single checkpoint that is converted on load). For `Task.check_inputs`."""
    from .errors import WeightsUnavailable
    from .hub import fetch

    source = entry.source
    if source.file is not None:
        return None
    if source.path is not None:
        try:
            path = fetch(source) / relative
        except WeightsUnavailable:
            return None
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.repo, relative, revision=source.revision)
    return Path(found) if isinstance(found, str) else None


class TaskInputs(BaseModel):
    """Base for a task's inputs; the CLI turns each field into a `--field-name` option."""

    model_config = ConfigDict(extra="forbid")


class Task(ABC):
    """One way of using a fine-tuned model (class-conditional, novel view, editing, ...).

    `levels` are the guidance levels the task provides: ("full", "null") for one condition,
    ("full", "partial", "null") for two (dual guidance). `metrics` are the image metrics
    `priorswap eval --data` computes for it (names from `priorswap.image_metrics.METRICS`).
    `image_background` is the gray level `eval --data` composites transparent pixels of its images onto.
    """

    name: ClassVar[str]
    Inputs: ClassVar[type[TaskInputs]]
    levels: ClassVar[tuple[Level, ...]] = ("full", "null")
    metrics: ClassVar[tuple[str, ...]] = ()
    image_background: ClassVar[int] = 255  # white, as Zero-1-to-3's preprocessing (priorswap.images.WHITE)

    def __init__(self, model: Denoiser, folder: object = None) -> None:
        self.model = model
        self.folder = folder

    @classmethod
    def check_inputs(cls, inputs: TaskInputs, entry: ModelEntry) -> None:
        """Checks `inputs` against what is known of the model before its weights load (its registry entry;
        configs through `model_file`); raises PriorswapError. `priorswap sample` calls it before loading, and
        `eval --data` on every dataset line.
        The default checks nothing; `conditions` must still check what this could not know."""
        return None

    @abstractmethod
    def batch_size(self, inputs: TaskInputs) -> int:
        """How many samples the inputs ask for."""

    @abstractmethod
    def conditions(self, inputs: TaskInputs, denoiser: Denoiser) -> dict[Level, Condition]:
        """Conditions for `denoiser` at each level (the model, or a prior for autoguidance)."""

    def latent_shape(self, inputs: TaskInputs) -> tuple[int, ...]:
        """Shape of the initial noise (B, C, H, W) at the model's native size."""
        size = self.model.latent_size
        return (self.batch_size(inputs), self.model.latent_space.channels, size, size)

    def can_decode(self) -> bool:
        """Whether `decode` returns images here (a decoder is at hand), so that a caller that needs images can
        refuse before sampling. The default: whether the task defines `decode`; a task whose decoder may be
        missing (no vae/ in the model's folder) overrides this."""
        return type(self).decode is not Task.decode

    def decode(self, latents: torch.Tensor) -> torch.Tensor | None:
        """Images in [0, 1], (B, 3, H, W), or None when the model has no decoder at hand (`can_decode`).

        A task whose images depend on its inputs (paste an edit back into the source, crop to the input's
        size) declares `decode(self, latents, inputs)`: `Pair.sample` then passes the validated inputs."""
        return None

    def decode_with(self, latents: torch.Tensor, inputs: TaskInputs) -> torch.Tensor | None:
        """Calls `decode`, with the inputs when the task's `decode` takes an `inputs` parameter."""
        if "inputs" in inspect.signature(self.decode).parameters:
            return self.decode(latents, inputs=inputs)  # type: ignore[call-arg]
        return self.decode(latents)
