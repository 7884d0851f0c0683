"""The one interface every model family implements: a σ-space denoiser D(x; σ, cond) → x̂0."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal

import torch

from .condition_reuse import cross_attention_projections
from .conditions import Condition
from .latents import LatentSpace
from .parameterization import coefficients, convert_frame, frame_of, to_x0
from .schedules import DiscreteSchedule, Schedule, TimestepMatch

Modality = Literal["image", "video"]


def dtype_and_device(net: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    """A network's dtype and device: its own `dtype`/`device` attributes (diffusers, transformers), else
    those of its first floating-point parameter or buffer (a plain `nn.Module`); float32 on the CPU for
    a network with none."""
    dtype, device = getattr(net, "dtype", None), getattr(net, "device", None)
    if isinstance(dtype, torch.dtype) and isinstance(device, torch.device):
        return dtype, device
    tensors = [*net.parameters(), *net.buffers()]
    first = next((t for t in tensors if t.is_floating_point()), tensors[0] if tensors else None)
    if first is None:
        return torch.float32, torch.device("cpu")
    return first.dtype, first.device


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where `module` runs: accelerate's execution device when it is offloaded (its parameters then wait on
    the `meta` placeholder between calls), else where its parameters and buffers are."""
    for sub in module.modules():
        device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    return dtype_and_device(module)[1]


class Denoiser(ABC):
    """Wraps one network. Subclasses set the attributes and implement `forward` and `null_condition`.

    Attributes: `latent_space`, `schedule`, `parameterization` (epsilon, v_prediction, sample,
    flow), `modality` (image/video), `resolution` (native pixel size), `learned_sigma` (extra
    variance channels to drop), `fixed_size` (the network only runs at its native latent size).
    """

    latent_space: LatentSpace
    schedule: Schedule
    parameterization: str = "epsilon"
    modality: Modality = "image"
    resolution: int = 256
    learned_sigma: bool = False
    fixed_size: bool = False
    scheduler_config: dict = {}  # noqa: RUF012  (the training scheduler's diffusers config)
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    rescale_space: Literal["x0", "output"] = "x0"
    """Where guidance rescale acts: on x̂0, or on the network's own prediction (ε or v), as some official
    samplers (DynamiCrafter) do."""

    def x0_step_scale(self, t: float, t_prev: float | None) -> float:
        """Factor on x̂0 (ε kept) in the DDIM step from timestep `t` to `t_prev` (None: the last step), for
        models trained on per-timestep rescaled latents (DynamiCrafter, VideoCrafter2). Default 1."""
        return 1.0

    def init_discrete(self, net: torch.nn.Module, scheduler_config: dict, request: Any) -> None:
        """Sets what a network trained on a diffusers discrete schedule shares: `net` (frozen, eval),
        latent space and resolution from the load request, schedule and parameterization from the
        scheduler config, dtype and device from the network (any torch module: a diffusers model, a
        transformers model or a plain `nn.Module`)."""
        self.net = net.eval().requires_grad_(False)
        self.latent_space = request.latent_space
        self.scheduler_config = dict(scheduler_config)
        self.schedule = DiscreteSchedule.from_scheduler_config(self.scheduler_config)
        self.parameterization = self.scheduler_config.get("prediction_type", "epsilon")
        self.resolution = request.entry.resolution
        self.dtype, self.device = dtype_and_device(net)

    @abstractmethod
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Raw network output for input `x` in the network's own frame at timesteps `t` (B,)."""

    @abstractmethod
    def null_condition(self) -> Condition:
        """The condition the network was trained with for 'no condition' (batch 1, cached)."""

    def condition_modules(self) -> list[torch.nn.Module]:
        """Modules whose one input is computed from the condition alone, so their output is the same at every
        step of a run and the engine reuses it (`priorswap.condition_reuse`). Default: the key and value
        projections of every diffusers cross-attention in `self.net`. Override to add a network's own
        (a caption projection), or return [] to turn reuse off."""
        return cross_attention_projections(getattr(self, "net", None))

    def offload_modules(self) -> list[torch.nn.Module]:
        """The networks `load_pair(offload=True)` keeps in CPU memory and moves to the device for each call
        (accelerate's cpu_offload). Default: `self.net`. Override to add a network the denoiser calls on
        the device itself (DynamiCrafter's image projection)."""
        net = getattr(self, "net", None)
        return [net] if isinstance(net, torch.nn.Module) else []

    @property
    def frame(self) -> str:
        return frame_of(self.parameterization)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.latent_space.downsample

    def denoise(
        self,
        x_vp: torch.Tensor,
        sigma: float,
        cond: Condition,
        t: torch.Tensor | float | None = None,
        match: TimestepMatch = "continuous",
        as_parameterization: str | None = None,
    ) -> torch.Tensor:
        """x̂0 from a noisy sample in the VP frame at σ (the engine's entry point).

        `t` overrides the timestep (the model's own scheduler grid); otherwise it is matched
        from σ on this denoiser's schedule: "continuous" interpolates log σ, "nearest" takes the
        nearest grid timestep and converts the output to x̂0 at that grid point's σ, the noise level
        the network was told. `as_parameterization` reads the output as another parameterization
        (only for the naive no-adapter ablation).
        """
        parameterization = as_parameterization or self.parameterization
        x = convert_frame(x_vp, sigma, "vp", self.frame).to(self.dtype)
        sigma_out = sigma  # the σ the network is told: its output is converted to x̂0 there
        if t is None:
            t = self.schedule.sigma_to_t(sigma, match)
            if match == "nearest":  # the grid point's own σ, not the σ it stands in for (DESIGN.md)
                sigma_out = self.schedule.t_to_sigma(float(t))
        if math.isinf(sigma_out) and parameterization == "epsilon":
            sigma_coeff = self.schedule.sigma_max_finite  # x̂0 from ε is undefined at σ = ∞
        else:
            sigma_coeff = sigma_out
        if not torch.is_tensor(t):
            t = torch.tensor(float(t), dtype=torch.float32)
        t = t.to(self.device).reshape(-1).expand(x.shape[0])
        out = self.forward(x, t, cond)
        if self.learned_sigma:
            out = out[:, : self.latent_space.channels]
        a, b = coefficients(self.frame, sigma_coeff)
        return to_x0(parameterization, out.to(x_vp.dtype), x.to(x_vp.dtype), a, b)

    def predict(self, x: torch.Tensor, sigma: float, cond: Condition) -> torch.Tensor:
        """x̂0 for x = x0 + σ·n (the variance-exploding form of k-diffusion and EDM)."""
        return self.denoise(convert_frame(x, sigma, "ve", "vp"), sigma, cond)
