"""Zero-1-to-3 (Liu et al. 2023): novel views of an object from one image and a relative camera move.

The UNet takes the noisy latent concatenated with the source image's VAE latent (8 channels) and
one cross-attention token, `cc_projection(concat(CLIP image embedding, pose))`; its null condition
is zeros for both. A prior (e.g. Stable Diffusion) sees only the noisy latent and its own null.

Registration only: importing this module imports neither torch nor diffusers.
"""

from pathlib import Path

from priorswap import Family, hookimpl

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")
COMPONENTS = ["unet", "scheduler", "vae", "image_encoder", "cc_projection"]
# model_index.json of the released kxic/zero123-* folders (the reference community pipeline's layout)
MODEL_INDEX = {
    "_class_name": "Zero1to3StableDiffusionPipeline", "cc_projection": ["pipeline_zero1to3", "CCProjection"],
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"], "requires_safety_checker": False,
    "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}


@hookimpl
def register_denoisers(register):
    register(
        Family(
            name="zero123",
            load="priorswap.plugins.zero123.denoiser:load",
            describe="priorswap.plugins.zero123.denoiser:describe",
            pipeline_classes=("Zero1to3StableDiffusionPipeline", "Zero123Pipeline"),
            default_task="novel-view",
            folders={"model": list(COMPONENTS), "prior": list(COMPONENTS)},
        )
    )


@hookimpl
def register_tasks(register):
    register("novel-view", "priorswap.plugins.zero123.task:NovelViewTask")
    register("novel-view-stable", "priorswap.plugins.zero123.task:StableNovelViewTask")


@hookimpl
def register_registry_files(register):
    register(REGISTRY_FILE)


@hookimpl
def register_golden_checks(register):
    register("zero123", "priorswap.plugins.zero123.golden:check")
