"""Cross-architecture adapters and the planner that decides which ones a pair needs.

An adapter wraps the call to the prior: it maps the model's noisy latent (VP frame) and σ into
the prior's space, calls the prior, and maps x̂0 back. Schedule and parameterization mismatches
need no wrapper: every denoiser already speaks σ and x̂0, so they are listed for the user only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .conditions import Condition, repeat
from .latents import LatentSpace

Inner = Callable[[torch.Tensor, float, Condition], torch.Tensor]


@dataclass(frozen=True)
class PairSpec:
    """What the planner needs to know about one side of a pair (from the registry or a loaded model)."""

    name: str
    latent_space: LatentSpace
    schedule_key: str
    parameterization: str
    modality: str = "image"
    resolution: int = 256
    learned_sigma: bool = False
    fixed_size: bool = False

    @property
    def latent_size(self) -> int:
        return self.resolution // self.latent_space.downsample


class Adapter:
    """Wraps a prior call; `describe` says what it does in one line."""

    name = "adapter"

    def describe(self) -> str:
        return self.name

    def __call__(self, x: torch.Tensor, sigma: float, cond: Condition, inner: Inner) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class LatentAffine(Adapter):
    """Same autoencoder, other scale/shift: prior latent = k·latent + c, and σ scales by k."""

    k: float
    c: float
    name: str = "latent-affine"

    def describe(self) -> str:
        return f"latent-affine: prior latent = {self.k:.6g}·latent + {self.c:.6g}, σ → {self.k:.6g}·σ"

    def __call__(self, x: torch.Tensor, sigma: float, cond: Condition, inner: Inner) -> torch.Tensor:
        if math.isinf(sigma):
            x_p, sigma_p = x, sigma
        else:
            sigma_p = self.k * sigma
            x_p = (self.k * math.sqrt(sigma * sigma + 1.0) * x + self.c) / math.sqrt(sigma_p * sigma_p + 1.0)
        return (inner(x_p, sigma_p, cond) - self.c) / self.k


@dataclass
class FrameByFrame(Adapter):
    """A video latent (B, C, T, H, W) seen by an image prior as B·T frames."""

    name: str = "frame-by-frame"

    def describe(self) -> str:
        return "frame-by-frame: the image prior denoises each video frame independently"

    def __call__(self, x: torch.Tensor, sigma: float, cond: Condition, inner: Inner) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x0 = inner(frames, sigma, repeat(cond, t))
        return x0.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


@dataclass
class Resample(Adapter):
    """The prior only runs at its native latent size: resize the noisy latent in (nearest, which keeps
    the per-pixel noise level), and x̂0 back (bilinear)."""

    size: int
    name: str = "resample"

    def describe(self) -> str:
        return f"resample: the prior runs at {self.size}×{self.size} latents, x̂0 is resized back"

    def __call__(self, x: torch.Tensor, sigma: float, cond: Condition, inner: Inner) -> torch.Tensor:
        h, w = x.shape[-2:]
        x0 = inner(F.interpolate(x, size=(self.size, self.size), mode="nearest-exact"), sigma, cond)
        return F.interpolate(x0, size=(h, w), mode="bilinear", antialias=True)


LatentBridge = Callable[[LatentSpace, LatentSpace], "Adapter | None"]
"""A plugin-provided factory: returns an adapter between two latent spaces, or None if it can't."""


def affine_bridge(model: LatentSpace, prior: LatentSpace) -> Adapter | None:
    """Core bridge: two spaces of the same autoencoder differ by scale and shift only."""
    if model.family and model.family == prior.family and model.channels == prior.channels:
        k, c = model.affine_to(prior)
        return LatentAffine(k, c)
    return None


@dataclass
class Plan:
    """The adapters a pair needs, in call order, and a line per adapter for the user. `conversions` are the
    σ-matching and parameterization lines, which the adapter ablation (`adapters=False`) leaves out."""

    prior: str
    adapters: list[Adapter] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reason: str | None = None
    conversions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason is None

    def lines(self, ablated: bool = False) -> list[str]:
        """What the route does to the prior, one line each; `ablated`: without σ-matching and conversion."""
        return [a.describe() for a in self.adapters] + ([] if ablated else self.conversions) + self.notes


def plan_pair(
    model: PairSpec,
    prior: PairSpec,
    bridges: Iterable[LatentBridge] = (),
    match: str = "continuous",
) -> Plan:
    """Which adapters bridge `prior` to `model`; `plan.reason` says why not when they can't."""
    plan = Plan(prior=prior.name)
    if model.modality == "image" and prior.modality == "video":
        plan.reason = "the prior is a video model and the fine-tuned model makes images"
        return plan
    if model.modality == "video" and prior.modality == "image":
        plan.adapters.append(FrameByFrame())

    if not model.latent_space.same_as(prior.latent_space):
        ms, ps = model.latent_space, prior.latent_space
        bridge, failed = None, []
        for factory in (affine_bridge, *bridges):
            try:
                bridge = factory(ms, ps)
            except Exception as e:  # a broken plugin bridge must not stop pairing with the others
                failed.append(f"{getattr(factory, 'label', getattr(factory, '__name__', factory))} raised "
                              f"{type(e).__name__}: {e}")
                continue
            if bridge is not None:
                break
        plan.notes += [f"latent-space bridge skipped: {line}" for line in failed]
        if bridge is None:
            plan.reason = (
                f"latent spaces differ ({ms.name}: {ms.channels} ch, family {ms.family or '?'}; "
                f"{ps.name}: {ps.channels} ch, family {ps.family or '?'}) and no latent-space bridge "
                "(decode→encode or fitted linear map) is installed for them"
                + (f"; bridges that failed: {'; '.join(failed)}" if failed else "")
            )
            return plan
        plan.adapters.append(bridge)
    if model.latent_space.downsample != prior.latent_space.downsample and prior.fixed_size:
        plan.reason = "the prior has another downsampling factor and runs only at its native size"
        return plan
    if prior.fixed_size and prior.latent_size != model.latent_size:
        plan.adapters.append(Resample(prior.latent_size))

    if model.schedule_key != prior.schedule_key:
        plan.conversions.append(f"σ-matching ({match}): model's {model.schedule_key} → prior's {prior.schedule_key}")
    if model.parameterization != prior.parameterization:
        plan.conversions.append(
            f"parameterization: prior's {prior.parameterization} → x̂0 → model's {model.parameterization}")
    if prior.learned_sigma:
        plan.notes.append("learned-variance channels of the prior dropped")
    return plan
