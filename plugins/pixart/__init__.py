"""PixArt-α (diffusers PixArtAlphaPipeline) as a prior: a text-to-image diffusion transformer whose null
condition is the T5 encoding of "" — encoded once and cached on disk, so T5-XXL is loaded at most once.

Registration only: importing this module imports neither torch nor diffusers.
"""

from pathlib import Path

from priorswap import Family, hookimpl

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")


@hookimpl
def register_denoisers(register):
    register(
        Family(
            name="pixart",
            load="priorswap.plugins.pixart.denoiser:load",
            describe="priorswap.plugins.pixart.denoiser:describe",
            pipeline_classes=("PixArtAlphaPipeline",),
            # text_encoder/ and tokenizer/ are fetched by the loader only when the null condition is not cached
            folders={"prior": ["transformer", "scheduler"]},
            on_demand={"prior": ["text_encoder", "tokenizer"]},
        )
    )


@hookimpl
def register_registry_files(register):
    register(REGISTRY_FILE)
