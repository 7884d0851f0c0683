"""InstructPix2Pix (Brooks et al. 2023) and its fine-tunes (MagicBrush): SD 1.5 UNets with 8 input
channels (noisy latent + source-image latent) and CLIP text conditioning, edited with dual guidance.

Registration only: importing this module imports neither torch nor diffusers.
"""

from pathlib import Path

from priorswap import Family, hookimpl

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")


@hookimpl
def register_denoisers(register):
    register(
        Family(
            name="instruct_pix2pix",
            load="priorswap.plugins.instruct_pix2pix.denoiser:load",
            describe="priorswap.plugins.instruct_pix2pix.denoiser:describe",
            pipeline_classes=("StableDiffusionInstructPix2PixPipeline",),
            default_task="instruct-pix2pix",
            folders={"model": ["unet", "scheduler", "text_encoder", "tokenizer", "vae"]},
        )
    )


@hookimpl
def register_tasks(register):
    register("instruct-pix2pix", "priorswap.plugins.instruct_pix2pix.task:InstructPix2PixTask")


@hookimpl
def register_registry_files(register):
    register(REGISTRY_FILE)
