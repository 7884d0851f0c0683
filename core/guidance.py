"""Guidance rules as weighted sums of branches, plus rescale and a σ interval (diffusers guiders style).

A branch is (role, level): role "model" (the fine-tuned network) or "prior"; level "full" (all
conditions), "partial" (the first condition only, for dual guidance) or "null".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from .errors import GuidanceError

Role = Literal["model", "prior"]
Level = Literal["full", "partial", "null"]
Branch = tuple[Role, Level]

REFERENCE: Branch = ("model", "full")
ROLES: tuple[Role, ...] = ("model", "prior")
LEVELS: tuple[Level, ...] = ("full", "partial", "null")
_KEEP = object()  # `with_options`: keep the rule's own value


@dataclass(frozen=True)
class Term:
    """One weighted branch of a guidance rule."""

    weight: float
    role: Role
    level: Level

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise GuidanceError(f"a guidance term's role is one of {', '.join(ROLES)}, got {self.role!r}")
        if self.level not in LEVELS:
            raise GuidanceError(f"a guidance term's level is one of {', '.join(LEVELS)}, got {self.level!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int | float):
            raise GuidanceError(f"a guidance term's weight is a number, got {self.weight!r}")

    @property
    def branch(self) -> Branch:
        """(role, level): the prediction this term weighs."""
        return (self.role, self.level)


@dataclass(frozen=True)
class Guidance:
    """x̂0 = Σ wᵢ·x̂0(branchᵢ); weights sum to 1.

    `rescale` is φ of Lin et al. (match the std of the conditional prediction); `interval`
    (σ_lo, σ_hi) applies guidance only for σ in that range and uses the conditional prediction
    elsewhere.
    """

    name: str
    terms: tuple[Term, ...]
    rescale: float = 0.0
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not all(math.isfinite(t.weight) for t in self.terms):
            raise GuidanceError(f"guidance weights must be finite numbers, got {[t.weight for t in self.terms]}")
        total = sum(t.weight for t in self.terms)
        if not math.isclose(total, 1.0, rel_tol=1e-9, abs_tol=1e-9):
            raise GuidanceError(f"guidance weights must sum to 1, got {total}")
        if isinstance(self.rescale, bool) or not isinstance(self.rescale, int | float) or not 0 <= self.rescale <= 1:
            raise GuidanceError(f"rescale must be a number in [0, 1], got {self.rescale!r}")
        if self.interval is not None and not _is_interval(self.interval):
            raise GuidanceError(f"interval must be (σ_low, σ_high), two numbers with 0 ≤ σ_low ≤ σ_high, got "
                                f"{self.interval!r}")

    @property
    def uses_prior(self) -> bool:
        """Whether any non-zero term is the prior's: the pair needs one."""
        return any(t.role == "prior" and t.weight != 0.0 for t in self.terms)

    def active(self, sigma: float) -> bool:
        """Whether guidance applies at σ (always, without an interval)."""
        return self.interval is None or self.interval[0] <= sigma <= self.interval[1]

    def terms_at(self, sigma: float) -> tuple[Term, ...]:
        """The non-zero terms to evaluate at σ (only the conditional branch outside the interval)."""
        if not self.active(sigma):
            return (Term(1.0, *REFERENCE),)
        return tuple(t for t in self.terms if t.weight != 0.0)

    def combine(self, preds: Mapping[Branch, torch.Tensor], sigma: float) -> torch.Tensor:
        """The guided x̂0 at σ from each branch's x̂0 (`preds`), with rescale when set."""
        terms = self.terms_at(sigma)
        out = sum(t.weight * preds[t.branch] for t in terms)
        if self.rescale > 0.0 and len(terms) > 1:
            out = rescale(out, preds[REFERENCE], self.rescale)
        return out

    def with_options(self, rescale: float | None = None, interval: Any = _KEEP) -> Guidance:
        """The same rule with another rescale φ and/or σ interval; `interval=None` removes the interval, an
        option not given keeps the rule's own."""
        if interval is _KEEP:
            interval = self.interval
        elif isinstance(interval, list):
            interval = tuple(interval)
        return replace(self, rescale=self.rescale if rescale is None else rescale, interval=interval)


def _is_interval(value: Any) -> bool:
    """(σ_low, σ_high): two finite-or-infinite non-negative numbers in order."""
    if not isinstance(value, tuple) or len(value) != 2:
        return False
    if any(isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) for v in value):
        return False
    return 0 <= value[0] <= value[1]


def rescale(guided: torch.Tensor, reference: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, Alg. 2): blend towards the guided result scaled to the
    per-sample std of the conditional prediction."""
    dims = tuple(range(1, guided.ndim))
    ratio = reference.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return phi * guided * ratio + (1.0 - phi) * guided


def cfg(scale: float) -> Guidance:
    """Classifier-free guidance: θ(∅) + γ·(θ(c) − θ(∅))."""
    return Guidance("cfg", (Term(scale, "model", "full"), Term(1.0 - scale, "model", "null")))


def prior_swap(scale: float) -> Guidance:
    """Prior swap: ψ(∅) + γ·(θ(c) − ψ(∅)); the unconditional half comes from the prior."""
    return Guidance("prior-swap", (Term(scale, "model", "full"), Term(1.0 - scale, "prior", "null")))


def dual_cfg(image_scale: float, text_scale: float) -> Guidance:
    """InstructPix2Pix: θ(∅,∅) + γ1·(θ(c1,∅) − θ(∅,∅)) + γ2·(θ(c1,c2) − θ(c1,∅))."""
    return Guidance(
        "dual-cfg",
        (
            Term(text_scale, "model", "full"),
            Term(image_scale - text_scale, "model", "partial"),
            Term(1.0 - image_scale, "model", "null"),
        ),
    )


def dual_prior_swap(image_scale: float, text_scale: float) -> Guidance:
    """Dual CFG with θ(∅,∅) replaced by the prior's ψ(∅); θ(c1,∅) stays with the model."""
    return Guidance(
        "dual-prior-swap",
        (
            Term(text_scale, "model", "full"),
            Term(image_scale - text_scale, "model", "partial"),
            Term(1.0 - image_scale, "prior", "null"),
        ),
    )


def autoguidance(scale: float) -> Guidance:
    """Autoguidance (Karras et al. 2024): ψ(c) + γ·(θ(c) − ψ(c)), ψ a weaker model, same condition."""
    return Guidance("autoguidance", (Term(scale, "model", "full"), Term(1.0 - scale, "prior", "full")))


METHODS = {
    "cfg": cfg,
    "prior-swap": prior_swap,
    "autoguidance": autoguidance,
    "dual-cfg": dual_cfg,
    "dual-prior-swap": dual_prior_swap,
}
DUAL_METHODS = ("dual-cfg", "dual-prior-swap")
PRIOR_METHODS = ("prior-swap", "dual-prior-swap", "autoguidance")


def build(method: str, scale: float, image_scale: float | None = None) -> Guidance:
    """A guidance rule by name (`METHODS`); dual rules take `image_scale` too."""
    if method not in METHODS:
        raise GuidanceError(f"unknown guidance method {method!r}; choose one of {', '.join(METHODS)}")
    if method in DUAL_METHODS:
        if image_scale is None:
            raise GuidanceError(f"{method} needs an image guidance scale as well as the text scale")
        return METHODS[method](image_scale, scale)
    return METHODS[method](scale)
