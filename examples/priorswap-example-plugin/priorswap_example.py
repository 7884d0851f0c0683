"""priorswap-example-plugin: a class-conditional diffusers UNet2DModel as a priorswap model family.

A folder the plugin loads looks like a diffusers pipeline saved with `save_pretrained`:

    model_index.json   {"_class_name": "ExampleClassUNetPipeline", ...}
    unet/              UNet2DModel with num_class_embeds = classes + 1, safetensors
    scheduler/         the training scheduler's config (ε-prediction, a VP schedule)

The UNet denoises pixels directly (no autoencoder). The last class embedding is the null class
the network was trained with for label dropout; it is the unconditional half of CFG.

Registering the plugin imports neither torch nor diffusers: the family and the task are named by
"module:attr" strings, and the classes that need torch are defined on first use (see __getattr__).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from priorswap import Family, hookimpl

PIPELINE_CLASS = "ExampleClassUNetPipeline"


@hookimpl
def register_denoisers(register):
    register(
        Family(
            name="example-unet",
            load="priorswap_example:load",
            describe="priorswap_example:describe",
            pipeline_classes=(PIPELINE_CLASS,),
            default_task="example-class",
            folders={"model": ["unet", "scheduler"], "prior": ["unet", "scheduler"]},
        )
    )


@hookimpl
def register_tasks(register):
    register("example-class", "priorswap_example:ExampleClassTask")


def _read(folder: Path, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text())


def describe(folder: Path) -> dict:
    """Registry-entry fields for a local folder, read from its configs (no weights are loaded)."""
    from priorswap.loading import schedule_fields

    unet = _read(folder, "unet/config.json")
    scheduler = _read(folder, "scheduler/scheduler_config.json")
    return {
        # Pixels: as many channels as the UNet takes, no downsampling, values in [-1, 1].
        "latent_space": {"channels": unet["in_channels"], "downsample": 1, "family": "pixels"},
        "schedule": schedule_fields(scheduler),
        "parameterization": scheduler.get("prediction_type", "epsilon"),
        "resolution": unet["sample_size"],
        "task": "example-class",
        "description": f"local example UNet folder {Path(folder).name}",
    }


def load(request) -> Any:
    """Builds the denoiser from a LoadRequest: weights through priorswap's safe loader."""
    from diffusers import UNet2DModel

    from priorswap.hub import load_component

    # Safetensors only, unless the user opted in to pickles (--allow-pickle).
    unet = load_component(
        UNet2DModel, request.folder, "unet", allow_pickle=request.allow_pickle, dtype=request.dtype
    ).to(request.device)
    scheduler_config = _read(request.folder, "scheduler/scheduler_config.json")
    return _classes()["ExampleUNetDenoiser"](unet, scheduler_config, request)


def save_pretrained(folder: Path, unet: Any, scheduler: Any) -> Path:
    """Writes a UNet2DModel and its scheduler as a folder this plugin recognises."""
    folder = Path(folder)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": PIPELINE_CLASS,
        "unet": ["diffusers", type(unet).__name__],
        "scheduler": ["diffusers", type(scheduler).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


@functools.cache
def _classes() -> dict[str, type]:
    """The classes that need torch, defined once on first use."""
    import torch
    from pydantic import Field

    from priorswap import Denoiser, DiscreteSchedule, PriorswapError, Task, TaskInputs

    class ExampleUNetDenoiser(Denoiser):
        """ε-prediction UNet2DModel; the null condition is the last class embedding."""

        def __init__(self, unet, scheduler_config: dict, request) -> None:
            self.net = unet.eval().requires_grad_(False)
            self.null_class = int(unet.config.num_class_embeds) - 1
            self.latent_space = request.latent_space
            self.scheduler_config = dict(scheduler_config)
            self.schedule = DiscreteSchedule.from_scheduler_config(scheduler_config)
            self.parameterization = scheduler_config.get("prediction_type", "epsilon")
            self.resolution = unet.config.sample_size * request.latent_space.downsample
            self.dtype = unet.dtype
            self.device = unet.device

        def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            return self.net(x, t, class_labels=cond["class_labels"]).sample

        def null_condition(self) -> dict:
            return {"class_labels": torch.tensor([self.null_class], device=self.device)}

    class ExampleClassInputs(TaskInputs):
        class_label: list[int] = Field(..., min_length=1, description="class id(s); one sample per id")

    class ExampleClassTask(Task):
        """One sample per class label; pixel models with 3 channels decode to images."""

        name = "example-class"
        Inputs = ExampleClassInputs

        def batch_size(self, inputs: ExampleClassInputs) -> int:
            return len(inputs.class_label)

        def conditions(self, inputs: ExampleClassInputs, denoiser: Denoiser) -> dict:
            null_class = getattr(denoiser, "null_class", None)
            if null_class is None:
                raise PriorswapError(f"{type(denoiser).__name__} takes no class labels")
            if not all(0 <= c < null_class for c in inputs.class_label):
                raise PriorswapError(f"class labels must be in [0, {null_class - 1}], got {inputs.class_label}")
            labels = torch.tensor(inputs.class_label, device=denoiser.device)
            return {"full": {"class_labels": labels}, "null": denoiser.null_condition()}

        def decode(self, latents: torch.Tensor) -> torch.Tensor | None:
            if latents.shape[1] != 3:
                return None  # not an RGB model: keep the latents
            return (latents.float() / 2 + 0.5).clamp(0, 1)

    return {c.__name__: c for c in (ExampleUNetDenoiser, ExampleClassInputs, ExampleClassTask)}


def __getattr__(name: str) -> Any:
    """PEP 562: `priorswap_example.ExampleClassTask` (and the other classes) on first access."""
    if name in ("ExampleUNetDenoiser", "ExampleClassInputs", "ExampleClassTask"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
