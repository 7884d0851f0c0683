"""Noise schedules as σ-tables: σ(t) and t(σ), k-diffusion style.

A discrete variance-preserving schedule with cumulative ᾱ(t) has σ(t) = √((1−ᾱ)/ᾱ); the model
input at noise level σ is x/√(σ²+1). Rectified-flow models use s = σ/(1+σ) and timestep 1000·s.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

TimestepMatch = Literal["continuous", "nearest"]


class DiscreteSchedule:
    """A discrete VP schedule given by its ᾱ table (zero terminal SNR allowed: σ = ∞ there)."""

    frame = "vp"

    def __init__(self, alphas_cumprod: np.ndarray) -> None:
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        if ac.ndim != 1 or len(ac) < 2:
            raise ValueError("alphas_cumprod must be a 1-D table with at least two entries")
        with np.errstate(divide="ignore"):
            self.sigmas = np.sqrt((1.0 - ac) / ac)
            self.log_sigmas = np.log(self.sigmas)
        if not np.all(np.diff(self.log_sigmas) > 0):
            raise ValueError("σ(t) must increase strictly with t")
        self.alphas_cumprod = ac

    @classmethod
    def from_scheduler_config(cls, config: dict) -> DiscreteSchedule:
        """Builds the table from a diffusers scheduler config (any VP scheduler)."""
        from diffusers import DDIMScheduler

        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "rescale_betas_zero_snr")
        kwargs = {k: config[k] for k in keys if config.get(k) is not None}
        return cls(DDIMScheduler(**kwargs).alphas_cumprod.double().numpy())

    @property
    def num_timesteps(self) -> int:
        return len(self.sigmas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def sigma_max_finite(self) -> float:
        finite = self.sigmas[np.isfinite(self.sigmas)]
        return float(finite[-1])

    def t_to_sigma(self, t: float) -> float:
        """σ at a (possibly fractional) timestep, interpolating log σ linearly."""
        t = float(np.clip(t, 0, self.num_timesteps - 1))
        lo = int(math.floor(t))
        hi = min(lo + 1, self.num_timesteps - 1)
        w = t - lo
        if w == 0.0:
            return float(self.sigmas[lo])
        if not math.isfinite(self.log_sigmas[hi]):
            return math.inf
        return float(math.exp((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]))

    def sigma_to_t(self, sigma: float, match: TimestepMatch = "continuous") -> float:
        """Timestep whose σ equals `sigma`: interpolated in log σ, or the nearest grid point.

        σ outside the table clamps to its ends; σ = ∞ maps to the last timestep.
        """
        last = self.num_timesteps - 1
        if math.isinf(sigma) or sigma >= self.sigmas[-1]:
            return float(last)
        if sigma <= self.sigmas[0]:
            return 0.0
        log_sigma = math.log(sigma)
        if match == "nearest":
            return float(np.nanargmin(np.abs(self.log_sigmas - log_sigma)))
        # the grid point and the bracket are found on σ itself: math.log and numpy's vectorised log may differ by
        # an ulp (numpy 1.26 on AVX-512 CPUs), which would miss an exact grid point compared in log space
        hi = int(np.searchsorted(self.sigmas, sigma, side="left"))
        lo = hi - 1
        if self.sigmas[hi] == sigma:
            return float(hi)
        if not math.isfinite(self.log_sigmas[hi]):
            return float(lo)
        w = (log_sigma - self.log_sigmas[lo]) / (self.log_sigmas[hi] - self.log_sigmas[lo])
        return lo + min(max(float(w), 0.0), 1.0)

    def same_as(self, other: object) -> bool:
        return (
            isinstance(other, DiscreteSchedule)
            and len(other.alphas_cumprod) == len(self.alphas_cumprod)
            and bool(np.allclose(other.alphas_cumprod, self.alphas_cumprod, rtol=1e-6, atol=1e-9))
        )

    def describe(self) -> str:
        return f"discrete VP, {self.num_timesteps} steps, σ ∈ [{self.sigma_min:.4g}, {self.sigma_max:.4g}]"


class FlowSchedule:
    """Rectified flow: x = (1−s)·x0 + s·n with s = σ/(1+σ); the network sees timestep 1000·s."""

    frame = "flow"

    def __init__(self, num_train_timesteps: int = 1000) -> None:
        self.num_train_timesteps = num_train_timesteps

    @property
    def sigma_max(self) -> float:
        return math.inf

    @property
    def sigma_max_finite(self) -> float:
        return self.t_to_sigma(self.num_train_timesteps - 1)

    def t_to_sigma(self, t: float) -> float:
        s = float(t) / self.num_train_timesteps
        return math.inf if s >= 1.0 else s / (1.0 - s)

    def sigma_to_t(self, sigma: float, match: TimestepMatch = "continuous") -> float:
        s = 1.0 if math.isinf(sigma) else sigma / (1.0 + sigma)
        t = s * self.num_train_timesteps
        return float(round(t)) if match == "nearest" else t

    def same_as(self, other: object) -> bool:
        return isinstance(other, FlowSchedule) and other.num_train_timesteps == self.num_train_timesteps

    def describe(self) -> str:
        return f"rectified flow, timestep = {self.num_train_timesteps}·σ/(1+σ)"


Schedule = DiscreteSchedule | FlowSchedule
