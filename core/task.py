"""Tasks turn user inputs into conditions per guidance level and decode final latents."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated, ClassVar

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .conditions import Condition
from .denoiser import Denoiser
from .guidance import Level


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


Prompts = Annotated[list[str], BeforeValidator(_one_or_many), Field(min_length=1)]
"""A task input of one or more prompts (a single string is a list of one); `--prompt` repeats on the CLI."""


class TaskInputs(BaseModel):
    """Base for a task's inputs; the CLI turns each field into a `--field-name` option."""

    model_config = ConfigDict(extra="forbid")


class Task(ABC):
    """One way of using a fine-tuned model (class-conditional, novel view, editing, ...).

    `levels` are the guidance levels the task provides: ("full", "null") for one condition,
    ("full", "partial", "null") for two (dual guidance). `metrics` are the image metrics
    `priorswap eval --data` computes for it (names from `priorswap.image_metrics.METRICS`).
    """

    name: ClassVar[str]
    Inputs: ClassVar[type[TaskInputs]]
    levels: ClassVar[tuple[Level, ...]] = ("full", "null")
    metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: Denoiser, folder: object = None) -> None:
        self.model = model
        self.folder = folder

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

    def decode(self, latents: torch.Tensor) -> torch.Tensor | None:
        """Images in [0, 1], (B, 3, H, W), or None when the model has no decoder at hand."""
        return None
