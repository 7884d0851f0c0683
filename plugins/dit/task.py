"""Class-conditional generation (DiT's ImageNet classes)."""

from __future__ import annotations

import torch
from pydantic import Field

from priorswap import Denoiser, PriorswapError, Task, TaskInputs
from priorswap.vae import VaeDecoder


class ClassLabelInputs(TaskInputs):
    class_label: list[int] = Field(..., min_length=1, description="class id(s); one sample per id")


class ClassLabelTask(Task):
    """One sample per requested class label; decodes with the model folder's VAE when present."""

    name = "class-label"
    Inputs = ClassLabelInputs

    def __init__(self, model: Denoiser, folder=None) -> None:
        super().__init__(model, folder)
        self.decoder = VaeDecoder.from_folder(folder, model.latent_space) if folder is not None else None

    def batch_size(self, inputs: ClassLabelInputs) -> int:
        return len(inputs.class_label)

    def conditions(self, inputs: ClassLabelInputs, denoiser: Denoiser) -> dict:
        labels = torch.tensor(inputs.class_label, device=denoiser.device)
        null_class = getattr(denoiser, "null_class", None)
        if null_class is None:
            raise PriorswapError(f"{type(denoiser).__name__} takes no class labels (autoguidance needs a class model)")
        if int(labels.max()) >= null_class or int(labels.min()) < 0:
            raise PriorswapError(f"class labels must be in [0, {null_class - 1}], got {inputs.class_label}")
        return {"full": {"class_labels": labels}, "null": denoiser.null_condition()}

    def decode(self, latents: torch.Tensor) -> torch.Tensor | None:
        return self.decoder.decode(latents) if self.decoder is not None else None
