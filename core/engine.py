"""The sampling loop: route each guidance branch to its denoiser, batch branches per denoiser,
combine x̂0 predictions and step a diffusers scheduler."""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from .adapters import Adapter
from .condition_reuse import reusing
from .conditions import Condition, concat, expand
from .ddim import ddim_step
from .denoiser import Denoiser
from .errors import GuidanceError, PriorswapError
from .guidance import REFERENCE, Branch, Guidance, Role, rescale
from .parallel_forwards import ForwardThreads, install
from .parameterization import coefficients, convert_frame, from_x0, to_x0
from .schedules import TimestepMatch


@dataclass
class Route:
    """A denoiser plus the adapters that put it in the model's space.

    `match` is how the model's σ becomes this denoiser's timestep: "same" passes the scheduler's
    own timestep (identical schedules), else "continuous" or "nearest" σ-matching. "same" holds only
    while the adapters leave σ alone: where one moves it (a latent-space scale k maps σ to k·σ), the
    route σ-matches the moved σ with `rematch` instead. `naive_as` (ablation only) passes the model's
    timestep regardless and reads the output as the model's parameterization: no adapters at all.
    """

    denoiser: Denoiser
    adapters: tuple[Adapter, ...] = ()
    match: str = "same"
    naive_as: str | None = None
    rematch: str = "continuous"

    def predict(self, x_vp: torch.Tensor, sigma: float, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        def call(x: torch.Tensor, s: float, c: Condition) -> torch.Tensor:
            c = expand(c, x.shape[0])
            if self.match == "same" and (s == sigma or self.naive_as is not None):
                return self.denoiser.denoise(x, s, c, t=t, as_parameterization=self.naive_as)
            wanted = self.rematch if self.match == "same" else self.match
            match: TimestepMatch = "nearest" if wanted == "nearest" else "continuous"
            return self.denoiser.denoise(x, s, c, match=match)

        inner = call
        for adapter in reversed(self.adapters):
            inner = functools.partial(adapter, inner=inner)
        return inner(x_vp, sigma, cond)


@dataclass
class StepInfo:
    """What a callback sees after each step."""

    index: int
    total: int
    timestep: float
    sigma: float
    latents: torch.Tensor
    x0: torch.Tensor


@dataclass
class Sampler:
    """Runs a guidance rule over routes with a diffusers scheduler.

    `conditions` maps each branch (role, level) to its condition; `routes` maps each role to a
    Route. The model's scheduler defines the timesteps, σ and the state's frame. With
    `parallel_forwards`, a step's forwards through different routes (the model's and the prior's) run at the
    same time, each on its share of the CPU threads (`priorswap.parallel_forwards`); a step with one forward
    (CFG) runs the halves of its batch so instead. CPU only.
    """

    routes: Mapping[Role, Route]
    conditions: Mapping[Branch, Condition]
    guidance: Guidance
    scheduler: object
    forward_calls: dict[str, int] = field(default_factory=dict)
    """Forward passes per route, keyed by the roles it served ("model", "prior", "model+prior")."""
    parallel_forwards: bool = False
    ran_parallel: bool = field(default=False, init=False)
    """Whether the last `run` did run forwards side by side (not with one thread: nothing to share out)."""
    _batched: dict[tuple, Condition] | None = field(default=None, init=False, repr=False)
    """During `run`, the concatenated conditions of each route's branches, built once: the same tensors every
    step let condition reuse recognise them by identity (no value comparison, no device sync)."""
    _threads: ForwardThreads | None = field(default=None, init=False, repr=False)
    """During a `run` with `parallel_forwards`, the worker threads a step's forwards run on."""

    def __post_init__(self) -> None:
        if "model" not in self.routes:
            raise GuidanceError("routes needs the model's: routes['model'] = Route(model_denoiser)")
        for term in self.guidance.terms:  # every branch the rule can use has its route and condition, up front
            if term.weight == 0.0:
                continue
            if term.role not in self.routes:
                raise GuidanceError(f"guidance {self.guidance.name!r} needs a {term.role} but routes has none: give "
                                    f"routes[{term.role!r}] = Route(...)")
            if term.branch not in self.conditions:
                raise GuidanceError(f"guidance {self.guidance.name!r} uses the {term.role}'s {term.level!r} "
                                    f"prediction, but conditions has no {term.branch!r}: give its condition dict "
                                    f"(the task's conditions for the model, null_condition() for a prior's null)")
        model = self.routes["model"].denoiser
        if self.parallel_forwards:
            elsewhere = sorted({f"{role} on {r.denoiser.device}" for role, r in self.routes.items()
                                if torch.device(r.denoiser.device).type != "cpu"})
            if elsewhere:
                raise GuidanceError(f"parallel_forwards runs forwards side by side on CPU threads, but the "
                                    f"{', '.join(elsewhere)}: leave it off on a GPU")
        for role, route in self.routes.items():
            if route.match == "same" and route.naive_as is None and not model.schedule.same_as(route.denoiser.schedule):
                raise ValueError(
                    f"the {role} route passes the model's timesteps through unchanged (match='same'), but its "
                    f"denoiser was trained on another noise schedule ({route.denoiser.schedule.describe()}; the "
                    f"model's: {model.schedule.describe()}); give it Route(..., match='continuous') or "
                    "match='nearest' to σ-match, as Pair.routes does"
                )

    def _model_sigma(self, t: torch.Tensor) -> float:
        return self.routes["model"].denoiser.schedule.t_to_sigma(float(t))

    def step_x0(self, x_in: torch.Tensor, sigma: float, t: torch.Tensor) -> torch.Tensor:
        """Guided x̂0 for the model-frame input `x_in` at σ; one forward per distinct route."""
        model = self.routes["model"].denoiser
        x_vp = convert_frame(x_in, sigma, model.frame, "vp")
        terms = self.guidance.terms_at(sigma)
        groups: dict[int, tuple[Route, list[Branch]]] = {}
        for term in terms:
            route = self.routes.get(term.role)
            if route is None:
                raise ValueError(f"guidance {self.guidance.name!r} needs a {term.role} but none was given")
            groups.setdefault(id(route), (route, []))[1].append(term.branch)
        if self._threads is None:
            outputs = [self._route_x0(route, branches, x_vp, sigma, t) for route, branches in groups.values()]
        elif len(groups) > 1:
            outputs = self._threads.run([functools.partial(self._route_x0, route, branches, x_vp, sigma, t)
                                         for route, branches in groups.values()])
        else:  # one forward (CFG): its rows side by side instead
            outputs = [self._route_x0(*next(iter(groups.values())), x_vp, sigma, t, split=self._threads)]
        preds: dict[Branch, torch.Tensor] = {}
        for (_, branches), x0 in zip(groups.values(), outputs, strict=True):
            label = "+".join(sorted({role for role, _ in branches}))
            self.forward_calls[label] = self.forward_calls.get(label, 0) + 1
            preds.update(zip(branches, x0.chunk(len(branches)), strict=True))
        if model.rescale_space == "output" and self.guidance.rescale > 0.0:
            return self._combine_rescaled_output(preds, x_in, sigma)
        return self.guidance.combine(preds, sigma)

    def _route_x0(self, route: Route, branches: list[Branch], x_vp: torch.Tensor, sigma: float,
                  t: torch.Tensor, split: ForwardThreads | None = None) -> torch.Tensor:
        """One forward of `route` over its `branches` (batched); their x̂0 predictions, branch after branch.
        With `split`, the batch's rows go through the network in as many parts as it has workers, side by side
        (rows are independent: the same predictions)."""
        batch = x_vp.shape[0]
        key = (id(route), tuple(branches), batch)
        cond = None if self._batched is None else self._batched.get(key)
        if cond is None:
            cond = concat([expand(self.conditions[b], batch) for b in branches])
            if self._batched is not None:
                self._batched[key] = cond
        x = x_vp.repeat(len(branches), *[1] * (x_vp.ndim - 1))
        rows = x.shape[0]
        if split is None or rows < 2:
            return route.predict(x, sigma, t, cond)
        edges = sorted({rows * i // split.workers for i in range(split.workers + 1)})
        return torch.cat(split.run([
            functools.partial(route.predict, x[a:b], sigma, t, {k: v[a:b] for k, v in cond.items()})
            for a, b in itertools.pairwise(edges)]))

    def _combine_rescaled_output(self, preds: dict[Branch, torch.Tensor], x_in: torch.Tensor, sigma: float):
        """Guidance rescale on the model's own prediction (ε or v) instead of x̂0 (`rescale_space="output"`)."""
        model = self.routes["model"].denoiser
        plain = self.guidance.with_options(rescale=0.0)
        x0 = plain.combine(preds, sigma)
        if len(plain.terms_at(sigma)) < 2:
            return x0
        finite = math.isinf(sigma) and model.parameterization == "epsilon"
        a, b = coefficients(model.frame, model.schedule.sigma_max_finite if finite else sigma)
        out = from_x0(model.parameterization, x0, x_in, a, b)
        ref = from_x0(model.parameterization, preds[REFERENCE], x_in, a, b)
        return to_x0(model.parameterization, rescale(out, ref, self.guidance.rescale), x_in, a, b)

    @torch.no_grad()
    def run(
        self,
        noise: torch.Tensor,
        steps: int,
        callback: Callable[[StepInfo], None] | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Samples from `noise` (unit variance) in `steps` scheduler steps; returns the final latent.
        `eta` > 0 makes DDIM stochastic (its step noise drawn from `generator`, as diffusers pipelines do).
        What the networks compute from their conditions alone is computed once per run
        (`Denoiser.condition_modules`)."""
        sched = self.scheduler
        if eta and type(sched).__name__ != "DDIMScheduler":
            raise PriorswapError(f"eta={eta:g} needs the DDIM scheduler (got {type(sched).__name__})")
        denoisers = {id(r.denoiser): r.denoiser for r in self.routes.values()}.values()
        workers = min(max(2, len({id(r) for r in self.routes.values()})), torch.get_num_threads())
        self._batched = {}
        try:
            with ExitStack() as stack:
                self.ran_parallel = self.parallel_forwards and workers > 1  # one thread: nothing to share out
                if self.ran_parallel:
                    install(m for d in denoisers for m in d.offload_modules())  # the networks' convolutions
                    self._threads = stack.enter_context(ForwardThreads(workers))
                stack.enter_context(reusing(m for d in denoisers for m in d.condition_modules()))
                return self._run(noise, steps, callback, eta, generator)
        finally:
            self._batched = None
            self._threads = None

    def _step_noise(self, generator: torch.Generator | None) -> dict:
        """The seeded generator for a scheduler whose step draws noise (DDPM, Euler ancestral, ...; diffusers
        pipelines pass it so): without it, a `native` stochastic scheduler ignored the seed."""
        step = type(self.scheduler).step
        if generator is None or "generator" not in inspect.signature(step).parameters:
            return {}
        return {"generator": generator}

    def _run(
        self,
        noise: torch.Tensor,
        steps: int,
        callback: Callable[[StepInfo], None] | None,
        eta: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        sched = self.scheduler
        model = self.routes["model"].denoiser
        sched.set_timesteps(steps, device="cpu")  # read on the host each step: no device sync per float(t)
        x = noise * getattr(sched, "init_noise_sigma", 1.0)  # flow schedulers start at unit noise, and lack it
        prediction_type = getattr(sched.config, "prediction_type", None) or "flow"
        step_noise = self._step_noise(generator)
        timesteps = sched.timesteps
        for i, t in enumerate(timesteps):
            x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
            sigma = self._model_sigma(t)
            x0 = self.step_x0(x_in, sigma, t)
            a, b = coefficients(model.frame, sigma)
            t_prev = float(timesteps[i + 1]) if i + 1 < len(timesteps) else None
            r = model.x0_step_scale(float(t), t_prev)
            if r != 1.0:
                # DDIM with x̂0 scaled by r and ε kept: step from the input whose (x̂0, ε) pair is (r·x̂0, ε)
                if type(sched).__name__ != "DDIMScheduler":
                    raise PriorswapError(
                        f"{type(model).__name__} rescales x̂0 per timestep, which only the DDIM scheduler "
                        "supports here; use --scheduler ddim"
                    )
                x = x + a * (r - 1.0) * x0
                x_in, x0 = x, r * x0
            out = from_x0(prediction_type, x0, x_in, a, b)
            if eta:
                x = ddim_step(sched, out, t, x, eta, generator)  # diffusers' step, NaN-free at ᾱ_t = 0
            else:
                x = sched.step(out, t, x, **step_noise).prev_sample
            if callback is not None:
                callback(StepInfo(i, len(sched.timesteps), float(t), sigma, x, x0))
        return x
