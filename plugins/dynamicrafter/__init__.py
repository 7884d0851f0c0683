"""DynamiCrafter (image-to-video) and VideoCrafter2 (text-to-video): the lvdm 3-D UNet and image Resampler.

Registration only: importing this module imports neither torch nor diffusers. The networks live in
`unet3d.py` / `resampler.py`, the σ-space denoisers in `denoiser.py`, the tasks in `task.py`, video
files in `video.py`; `golden.py` checks the networks against the reference fixtures and `convert.py`
turns a released checkpoint into a loadable folder.
"""

from pathlib import Path

from priorswap import Family, hookimpl

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")
_DENOISER = "priorswap.plugins.dynamicrafter.denoiser"
_CONVERT = "priorswap.plugins.dynamicrafter.convert:convert_for_entry"
_RECOGNISE = "priorswap.plugins.dynamicrafter.recognise"


@hookimpl
def register_denoisers(register):
    register(
        Family(
            name="dynamicrafter",
            load=f"{_DENOISER}:load",
            describe=f"{_DENOISER}:describe",
            pipeline_classes=("DynamiCrafterPipeline",),
            default_task="image-to-video",
            convert=_CONVERT,
            describe_checkpoint=f"{_RECOGNISE}:describe_dynamicrafter",
            folders={"model": ["unet", "image_proj", "scheduler", "text_encoder", "tokenizer", "image_encoder",
                               "vae"]},
        )
    )
    register(
        Family(
            name="videocrafter",
            load=f"{_DENOISER}:load",
            describe=f"{_DENOISER}:describe",
            pipeline_classes=("VideoCrafterPipeline",),
            default_task="text-to-video",
            convert=_CONVERT,
            describe_checkpoint=f"{_RECOGNISE}:describe_videocrafter",
            # a prior needs only its UNet and schedule; the text encoder is fetched on a null-cache miss
            folders={
                "model": ["unet", "scheduler", "text_encoder", "tokenizer", "vae"],
                "prior": ["unet", "scheduler"],
            },
            on_demand={"prior": ["text_encoder", "tokenizer"]},
        )
    )


@hookimpl
def register_tasks(register):
    register("image-to-video", "priorswap.plugins.dynamicrafter.task:ImageToVideoTask")
    register("text-to-video", "priorswap.plugins.dynamicrafter.task:TextToVideoTask")


@hookimpl
def register_commands(cli):
    from .commands import register

    register(cli)


@hookimpl
def register_golden_checks(register):
    register("dynamicrafter", "priorswap.plugins.dynamicrafter.golden:check")
    register("videocrafter", "priorswap.plugins.dynamicrafter.golden:check")


@hookimpl
def register_registry_files(register):
    if REGISTRY_FILE.is_file():
        register(REGISTRY_FILE)
