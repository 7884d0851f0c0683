"""Stable Diffusion 1.x/2.x UNets as priors: the null condition is the CLIP encoding of "".

Registration only: importing this module imports neither torch nor diffusers.
"""

from priorswap import Family, hookimpl


@hookimpl
def register_denoisers(register):
    register(
        Family(
            name="stable_diffusion",
            load="priorswap.plugins.stable_diffusion.denoiser:load",
            describe="priorswap.plugins.stable_diffusion.denoiser:describe",
            pipeline_classes=("StableDiffusionPipeline",),
            # text_encoder/ and tokenizer/ are fetched only when the null condition is not cached yet
            folders={"prior": ["unet", "scheduler"]},
            on_demand={"prior": ["text_encoder", "tokenizer"]},
        )
    )
