"""Class-conditional generation (DiT's ImageNet classes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import torch
from pydantic import Field

from priorswap import Denoiser, PriorswapError, Task, TaskInputs
from priorswap.task import model_file
from priorswap.vae import VaeDecoder

if TYPE_CHECKING:
    from priorswap.registry import ModelEntry


class ClassLabelInputs(TaskInputs):
    class_label: list[Annotated[int, Field(ge=0)]] = Field(..., min_length=1,
                                                           description="class id(s); one sample per id")


def check_labels(labels: list[int], classes: int) -> None:
    """Every label is one of the model's `classes` (its null class is the next id)."""
    if any(not 0 <= label < classes for label in labels):
        raise PriorswapError(f"class labels must be in [0, {classes - 1}], got {labels}")


class ClassLabelTask(Task):
    """One sample per requested class label; decodes with the model folder's VAE when present (loaded under the
    model's own pickle opt-in, on its device, in float32)."""

    name = "class-label"
    Inputs = ClassLabelInputs

    def __init__(self, model: Denoiser, folder=None) -> None:
        super().__init__(model, folder)
        self.decoder = None
        if folder is not None:
            self.decoder = VaeDecoder.from_folder(folder, model.latent_space, getattr(model, "allow_pickle", False))
        if self.decoder is not None:
            self.decoder.vae.to(model.device)

    def can_decode(self) -> bool:
        return self.decoder is not None

    @classmethod
    def check_inputs(cls, inputs: ClassLabelInputs, entry: ModelEntry) -> None:
        """The labels against the class count in the network's config (`num_embeds_ada_norm`), when that
        config is on this machine (a local folder, or a cached hub snapshot)."""
        config = model_file(entry, "transformer/config.json")
        if config is None:
            return
        from priorswap.configs import read_json

        classes = read_json(config).get("num_embeds_ada_norm")
        if isinstance(classes, int) and classes > 0:
            check_labels(inputs.class_label, classes)

    def batch_size(self, inputs: ClassLabelInputs) -> int:
        return len(inputs.class_label)

    def conditions(self, inputs: ClassLabelInputs, denoiser: Denoiser) -> dict:
        labels = torch.tensor(inputs.class_label, device=denoiser.device)
        null_class = getattr(denoiser, "null_class", None)
        if null_class is None:
            raise PriorswapError(f"{type(denoiser).__name__} takes no class labels (autoguidance needs a class model)")
        check_labels(inputs.class_label, null_class)
        return {"full": {"class_labels": labels}, "null": denoiser.null_condition()}

    def decode(self, latents: torch.Tensor) -> torch.Tensor | None:
        return self.decoder.decode(latents.to(self.decoder.vae.device)) if self.decoder is not None else None
