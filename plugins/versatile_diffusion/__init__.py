"""Versatile Diffusion (Xu et al. 2023), image variation: a UNet conditioned on all CLIP ViT-L/14 image tokens
of the source image; its null condition is the encoding of the pipeline's blank image.

Registration only: importing this module imports neither torch nor diffusers.
"""

from pathlib import Path

from priorswap import Family, hookimpl

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")

# The hub repo holds the whole four-flow model (text_unet, text_encoder, tokenizer, ...); image variation
# needs only these. A prior's CLIP image encoder is fetched only when its null encoding is not cached yet.
MODEL_FOLDERS = ["image_unet", "image_encoder", "image_feature_extractor", "vae", "scheduler"]
PRIOR_FOLDERS = ["image_unet", "scheduler"]


@hookimpl
def register_denoisers(register):
    register(
        Family(
            name="versatile_diffusion",
            load="priorswap.plugins.versatile_diffusion.denoiser:load",
            describe="priorswap.plugins.versatile_diffusion.denoiser:describe",
            # the image-variation pipeline's folders, and snapshots of the full hub repo
            pipeline_classes=("VersatileDiffusionImageVariationPipeline", "VersatileDiffusionPipeline"),
            default_task="image-variation",
            folders={"model": MODEL_FOLDERS, "prior": PRIOR_FOLDERS},
            on_demand={"prior": ["image_encoder", "image_feature_extractor"]},
        )
    )


@hookimpl
def register_tasks(register):
    register("image-variation", "priorswap.plugins.versatile_diffusion.task:ImageVariationTask")


@hookimpl
def register_registry_files(register):
    register(REGISTRY_FILE)
