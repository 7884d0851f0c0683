"""DiT (Peebles & Xie): class-conditional latent transformers, null class 1000, learned σ.

Registration only: importing this module imports neither torch nor diffusers.
"""

from priorswap import Family, hookimpl


@hookimpl
def register_denoisers(register):
    register(
        Family(
            name="dit",
            load="priorswap.plugins.dit.denoiser:load",
            describe="priorswap.plugins.dit.denoiser:describe",
            pipeline_classes=("DiTPipeline",),
            default_task="class-label",
            folders={"model": ["transformer", "scheduler", "vae"], "prior": ["transformer", "scheduler"]},
        )
    )


@hookimpl
def register_tasks(register):
    register("class-label", "priorswap.plugins.dit.task:ClassLabelTask")
