"""What a network predicts (ε, v, x0, flow velocity) and how it maps to x̂0, in a few lines each.

Every noisy input is written x = a·x0 + b·n in the network's own frame: VP (a = 1/√(σ²+1),
b = σ/√(σ²+1)), rectified flow (a = 1/(1+σ), b = σ/(1+σ)) or VE (a = 1, b = σ). The engine keeps
its state in the VP frame, which stays finite at σ = ∞ (zero terminal SNR).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Parameterization = Literal["epsilon", "v_prediction", "sample", "flow"]
Frame = Literal["vp", "flow", "ve"]

PARAMETERIZATIONS: tuple[str, ...] = ("epsilon", "v_prediction", "sample", "flow")


def frame_of(parameterization: str) -> Frame:
    """The input frame a network of this parameterization expects."""
    return "flow" if parameterization == "flow" else "vp"


def coefficients(frame: Frame, sigma: float) -> tuple[float, float]:
    """(a, b) with x = a·x0 + b·n at noise level σ; finite at σ = ∞ for VP and flow."""
    if frame == "ve":
        return 1.0, sigma
    if math.isinf(sigma):
        return 0.0, 1.0
    if frame == "vp":
        r = math.sqrt(sigma * sigma + 1.0)
        return 1.0 / r, sigma / r
    return 1.0 / (1.0 + sigma), sigma / (1.0 + sigma)


def convert_frame(x: torch.Tensor, sigma: float, source: Frame, target: Frame) -> torch.Tensor:
    """Rescales a noisy sample at σ from one frame to another (b/b ratio above σ = 1 keeps ∞ finite)."""
    if source == target:
        return x
    a_s, b_s = coefficients(source, sigma)
    a_t, b_t = coefficients(target, sigma)
    ratio = a_t / a_s if sigma <= 1.0 else b_t / b_s
    return x * ratio


def to_x0(parameterization: str, output: torch.Tensor, x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """x̂0 from a network output; `x` is the network input in its own frame."""
    if parameterization == "epsilon":
        return (x - b * output) / a
    if parameterization == "v_prediction":
        return a * x - b * output
    if parameterization == "sample":
        return output
    if parameterization == "flow":
        return x - b * output
    raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")


def from_x0(parameterization: str, x0: torch.Tensor, x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """The network output that would have given x̂0 at input `x` (inverse of `to_x0`)."""
    if parameterization == "epsilon":
        return (x - a * x0) / b
    if parameterization == "v_prediction":
        return (a * x - x0) / b
    if parameterization == "sample":
        return x0
    if parameterization == "flow":
        return (x - x0) / b
    raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")
