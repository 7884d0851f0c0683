"""priorswap: borrow the unconditional half of classifier-free guidance from a stronger prior.

    import priorswap
    pair = priorswap.load_pair("path/to/my-finetuned-dit", prior="dit-xl-2-256")
    result = pair.sample(class_label=[207], guidance="prior-swap", scale=1.5, seed=0)

Attributes load lazily, so `import priorswap` (and the CLI's `list`) imports neither torch nor
diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # sampling API
    "load_pair": "api",
    "load_denoiser": "api",
    "Pair": "api",
    "SampleResult": "api",
    "make_scheduler": "api",
    # guidance
    "Guidance": "guidance",
    "Term": "guidance",
    "cfg": "guidance",
    "prior_swap": "guidance",
    "dual_cfg": "guidance",
    "dual_prior_swap": "guidance",
    "autoguidance": "guidance",
    # extension API
    "Denoiser": "denoiser",
    "Task": "task",
    "TaskInputs": "task",
    "Family": "family",
    "LoadRequest": "family",
    "LatentSpace": "latents",
    "Adapter": "adapters",
    "DiscreteSchedule": "schedules",
    "FlowSchedule": "schedules",
    "hookimpl": "hookspecs",
    # engine and registry
    "Route": "engine",
    "Sampler": "engine",
    "StepInfo": "engine",
    "Registry": "registry",
    "compatible_priors": "loading",
    "get_plugins": "plugin_manager",
    "PriorswapError": "errors",
}

__all__ = [
    "Adapter",
    "Denoiser",
    "DiscreteSchedule",
    "Family",
    "FlowSchedule",
    "Guidance",
    "LatentSpace",
    "LoadRequest",
    "Pair",
    "PriorswapError",
    "Registry",
    "Route",
    "SampleResult",
    "Sampler",
    "StepInfo",
    "Task",
    "TaskInputs",
    "Term",
    "autoguidance",
    "cfg",
    "compatible_priors",
    "dual_cfg",
    "dual_prior_swap",
    "get_plugins",
    "hookimpl",
    "load_denoiser",
    "load_pair",
    "make_scheduler",
    "prior_swap",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'priorswap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .adapters import Adapter
    from .api import Pair, SampleResult, load_denoiser, load_pair, make_scheduler
    from .denoiser import Denoiser
    from .engine import Route, Sampler, StepInfo
    from .errors import PriorswapError
    from .family import Family, LoadRequest
    from .guidance import Guidance, Term, autoguidance, cfg, dual_cfg, dual_prior_swap, prior_swap
    from .hookspecs import hookimpl
    from .latents import LatentSpace
    from .loading import compatible_priors
    from .plugin_manager import get_plugins
    from .registry import Registry
    from .schedules import DiscreteSchedule, FlowSchedule
    from .task import Task, TaskInputs
