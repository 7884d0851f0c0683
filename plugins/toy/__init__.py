"""The embedded toy zoo: small diffusion models trained on scikit-learn's digits (16×16 pixels),
shipped inside the package so that the method can be seen and measured offline on a CPU.

Registration only: importing this module imports neither torch nor diffusers.
"""

from pathlib import Path

from priorswap import Family, hookimpl

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")


@hookimpl
def register_denoisers(register):
    register(
        Family(
            name="toy",
            load="priorswap.plugins.toy.denoisers:load",
            describe="priorswap.plugins.toy.denoisers:describe",
            pipeline_classes=("ToyDigitsPipeline",),
            default_task="toy-class",
            folders={"model": ["unet", "transformer", "scheduler"], "prior": ["unet", "transformer", "scheduler"]},
        )
    )


@hookimpl
def register_tasks(register):
    register("toy-class", "priorswap.plugins.toy.tasks:ToyClassTask")
    register("toy-view", "priorswap.plugins.toy.tasks:ToyViewTask")
    register("toy-edit", "priorswap.plugins.toy.tasks:ToyEditTask")


@hookimpl
def register_evaluators(register):
    for task in ("toy-class", "toy-view", "toy-edit"):
        register(task, "priorswap.plugins.toy.evaluate:run_request")


@hookimpl
def register_registry_files(register):
    register(REGISTRY_FILE)


@hookimpl
def register_commands(cli):
    from .commands import register

    register(cli)
