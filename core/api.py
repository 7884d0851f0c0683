"""Programmatic mix-and-match: resolve a pair, sample with any guidance, get latents and images back."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from . import checks
from . import guidance as G
from .adapters import Plan, plan_pair
from .dtypes import DTYPES
from .engine import Route, Sampler, StepInfo
from .errors import IncompatiblePair, PriorswapError, RegistryError, TaskInputError
from .loading import Loaded, Resolved, load, resolve, task_of
from .plugin_manager import Plugins, get_plugins
from .provenance import run_record
from .task import Task, TaskInputs

SCHEDULERS = ("ddim", "euler", "native")
MATCHES = ("continuous", "nearest")


def make_scheduler(kind: str, config: dict) -> Any:
    """A diffusers scheduler from the model's training-scheduler config: DDIM (the paper's), Euler or native."""
    import diffusers

    if kind in ("ddim", "euler") and "FlowMatch" in config.get("_class_name", ""):
        raise PriorswapError(f"the model is a rectified-flow model ({config['_class_name']}): the {kind} scheduler "
                             "steps a noise-schedule (VP) model only; sample it with its own scheduler: "
                             "--scheduler native (Python: scheduler='native'), or set `recommended: {scheduler: "
                             "native}` in its registry entry")
    if kind == "ddim":
        return diffusers.DDIMScheduler.from_config(config)
    if kind == "euler":
        return diffusers.EulerDiscreteScheduler.from_config(config)
    if kind == "native":
        name = config.get("_class_name", "")
        if not isinstance(getattr(diffusers, name, None), type):
            raise PriorswapError(f"scheduler 'native' needs the model's scheduler config to name a diffusers scheduler "
                                 f"class in `_class_name` (got {name!r}); use ddim or euler")
        return getattr(diffusers, name).from_config(config)
    raise PriorswapError(f"unknown scheduler '{kind}'; choose one of {', '.join(SCHEDULERS)}")


@dataclass
class SampleResult:
    """Final latents (model space), decoded images in [0, 1] when a decoder exists, and run facts.

    `record` is the JSON-ready run record (models with their sources, guidance, steps, scheduler, η,
    seed, dtypes, task inputs) that priorswap embeds in the files it writes (`priorswap.provenance`)."""

    latents: torch.Tensor
    images: torch.Tensor | None
    guidance: G.Guidance
    seed: int
    steps: int
    forward_calls: dict[str, int] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def offload_denoiser(denoiser: Any, device: str) -> None:
    """Keeps the denoiser's networks (`offload_modules()`: `.net`, and any other network it calls) in CPU memory;
    accelerate moves each to `device` for its forward."""
    modules = denoiser.offload_modules() if hasattr(denoiser, "offload_modules") else []
    if not modules:
        raise PriorswapError(f"{type(denoiser).__name__} has no network to offload (no `.net` module and no "
                             "`offload_modules()`): load it without --offload")
    try:
        from accelerate import cpu_offload
    except ImportError:
        raise PriorswapError("--offload needs accelerate: pip install accelerate") from None
    for module in modules:
        cpu_offload(module, execution_device=torch.device(device))
    denoiser.device = torch.device(device)


def as_dtype(value: Any, name: str,
             allowed: tuple[str, ...] = ("float32", "float16", "bfloat16", "float64")) -> Any:
    """`value` as a torch dtype: a torch.dtype or its name ("fp16", "bfloat16", "torch.float32", ...); None
    stays None. A PriorswapError names `name` and the dtypes it takes otherwise."""
    if value is None:
        return None
    text = str(value).lower().removeprefix("torch.")
    full = DTYPES.get(text, text)
    if full not in allowed:
        short = {f: n for n, f in DTYPES.items() if n != f}  # float16 → fp16, as the CLI spells it
        takes = ", ".join(f"torch.{a}" + (f" ('{short[a]}')" if a in short else "") for a in allowed)
        raise PriorswapError(f"{name} takes {takes}, got {value!r}")
    return getattr(torch, full)


def _number(value: Any, name: str) -> float:
    """`value` when it is a real number (not a bool or a string); a PriorswapError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PriorswapError(f"{name} must be a number, got {value!r}")
    return value


def _repeat_inputs(cond: dict, batch: int, times: int) -> dict:
    """Repeats each input's rows of a condition `times` (input by input); other entries (a shared
    batch-1 null condition) are left for the engine to broadcast."""
    return {k: v.repeat_interleave(times, dim=0) if v.shape[0] == batch else v for k, v in cond.items()}


@dataclass
class Pair:
    """A fine-tuned model, an optional prior, the adapters between them and the model's task."""

    model: Loaded
    prior: Loaded | None
    plan: Plan | None
    task: Task
    match: str = "continuous"
    adapters: bool = True
    plugins: Plugins | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("model", "prior", "plan", "match", "adapters") and name in self.__dict__:
            raise PriorswapError(f"Pair.{name} is fixed when the pair loads (its routes, plan and run records "
                                 f"follow it): load another pair, e.g. priorswap.load_pair(..., {name}=...)")
        super().__setattr__(name, value)

    @property
    def routes(self) -> Mapping[str, Route]:
        """The Route (denoiser + adapters) per role, built from the pair's current fields; read-only. To run
        other routes, pass your own mapping to `priorswap.Sampler` (docs/python-api.md, "Lower level")."""
        routes = {"model": Route(self.model.denoiser)}
        if self.prior is not None:
            if self.prior.denoiser is self.model.denoiser:
                routes["prior"] = routes["model"]  # same network: its branches share one forward
            elif not self.adapters:  # ablation: the model's timestep and parameterization, unadapted; the
                # maps that make the prior's input fit at all (latent space, size, frames) stay
                adapters = tuple(self.plan.adapters) if self.plan else ()
                routes["prior"] = Route(self.prior.denoiser, adapters, match="same",
                                        naive_as=self.model.denoiser.parameterization)
            else:
                same = self.model.denoiser.schedule.same_as(self.prior.denoiser.schedule)
                adapters = tuple(self.plan.adapters) if self.plan else ()
                routes["prior"] = Route(self.prior.denoiser, adapters, "same" if same else self.match,
                                        rematch=self.match)
        return MappingProxyType(routes)

    @property
    def inserted(self) -> list[str]:
        """What the prior's route does, one line each as `priorswap pairs` shows it (without σ-matching and
        parameterization conversion when the adapters are ablated); [] without a prior."""
        if self.plan is None or self.prior is None or self.prior.denoiser is self.model.denoiser:
            return []
        return self.plan.lines(ablated=not self.adapters)

    def guidance_for(
        self, method: str | None, scale: float | None, image_scale: float | None = None
    ) -> G.Guidance:
        """A guidance rule by name with the registry's recommended scales filling the gaps."""
        rec = self.model.resolved.entry.recommended
        dual = "partial" in self.task.levels
        if method is None:
            method = ("dual-prior-swap" if dual else "prior-swap") if self.prior else ("dual-cfg" if dual else "cfg")
        if dual != (method in G.DUAL_METHODS):
            kind = "two conditions (dual guidance)" if dual else "one condition"
            raise PriorswapError(f"guidance '{method}' does not fit the task '{self.task.name}', which has {kind}")
        if method in G.PRIOR_METHODS and self.prior is None:
            raise PriorswapError(f"guidance '{method}' needs a prior: load the pair with one "
                                 "(--prior on the command line, prior= in load_pair)")
        if image_scale is not None and method not in G.DUAL_METHODS:
            raise PriorswapError(f"an image guidance scale (--image-guidance) applies to dual guidance only; "
                                 f"'{method}' has one scale (--guidance)")
        scale = rec.guidance if scale is None else scale
        image_scale = (rec.image_guidance or 1.0) if image_scale is None else image_scale
        for value, option in ((scale, "the guidance scale"), (image_scale, "the image guidance scale")):
            if not math.isfinite(_number(value, option)):
                raise PriorswapError(f"{option} must be a finite number, got {value}")
        return G.build(method, scale, image_scale)

    def check_guidance(self, rule: G.Guidance) -> None:
        """Refuses a Guidance whose branches this pair cannot compute (a prior term without a prior, a level the
        task does not have), before any network runs."""
        if not isinstance(rule, G.Guidance):
            raise PriorswapError(f"guidance must be a method name ({', '.join(G.METHODS)}) or a priorswap.Guidance, "
                                 f"got {rule!r}")
        levels = self.task.levels
        for term in rule.terms:
            if term.role == "prior" and self.prior is None:
                raise PriorswapError(f"guidance '{rule.name}' needs a prior: load the pair with one (--prior on the "
                                     "command line, prior= in load_pair)")
            if term.level not in levels:
                raise PriorswapError(f"guidance '{rule.name}' uses the {term.role}'s '{term.level}' prediction, but "
                                     f"the task '{self.task.name}' has the levels {', '.join(levels)}")

    def inputs(self, inputs: TaskInputs | dict | None = None, **kwargs: Any) -> TaskInputs:
        """The task's validated inputs from a TaskInputs or a dict, and/or keywords (which override its fields);
        raises TaskInputError naming each field that is wrong."""
        if isinstance(inputs, TaskInputs):
            if not kwargs:
                return inputs
            inputs = dict(inputs)  # its fields, values as validated
        elif inputs is not None and not isinstance(inputs, Mapping):
            raise TaskInputError(f"task inputs come as keywords, a dict or pair.inputs(...), got a "
                                 f"{type(inputs).__name__}: e.g. pair.sample({_example(self.task)})")
        from pydantic import ValidationError

        try:
            return self.task.Inputs.model_validate({**(inputs or {}), **kwargs})
        except ValidationError as e:
            fields = ", ".join(self.task.Inputs.model_fields)
            problems = "; ".join(_input_problem(x) for x in e.errors())
            raise TaskInputError(f"bad input for task '{self.task.name}': {problems} (its inputs: {fields})"
                                 f"{_sampling_hint(e.errors())}") from e

    def sample(
        self,
        inputs: TaskInputs | dict | None = None,
        *,
        guidance: G.Guidance | str | None = None,
        scale: float | None = None,
        image_scale: float | None = None,
        steps: int | None = None,
        seed: int = 0,
        noise: torch.Tensor | None = None,
        scheduler: str | None = None,
        callback: Callable[[StepInfo], None] | None = None,
        decode: bool = True,
        num_samples: int = 1,
        eta: float | None = None,
        autocast: torch.dtype | str | None = None,
        parallel_forwards: bool = False,
        **task_inputs: Any,
    ) -> SampleResult:
        """Samples the model's task. `guidance` is a Guidance or a method name (cfg, prior-swap,
        autoguidance, dual-cfg, dual-prior-swap); task inputs come as a TaskInputs, a dict or keywords.
        `num_samples` draws that many samples per task input (rows ordered input by input). `eta`: DDIM
        stochasticity (default: the registry's recommendation, usually 0). `autocast` (e.g. torch.float16)
        runs the networks under torch.autocast in that dtype, weights unchanged (mixed precision, as the
        official DynamiCrafter scripts sample). `parallel_forwards` runs a step's model and prior forwards at the
        same time on the CPU, each on its share of the threads (faster for big networks; CPU only). The initial
        noise is
        `torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=<the model's dtype>)` drawn on
        the CPU and moved to the model's device, or `noise` when given: unit-variance noise of exactly that
        shape (DDIM's η noise still comes from `seed`)."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise PriorswapError(f"num_samples must be a whole number of at least 1, got {num_samples!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise PriorswapError(f"seed must be one whole number from 0 to 2**63 − 1, got {seed!r}; for several "
                                 "seeds, call sample once per seed (the CLI's --seeds does)")
        if isinstance(guidance, int | float) and not isinstance(guidance, bool):
            raise PriorswapError(f"guidance= is the rule (a method name such as 'prior-swap', or a Guidance); the "
                                 f"scale γ is scale=: pair.sample(..., scale={guidance!r})")
        if isinstance(guidance, G.Guidance):
            if scale is not None or image_scale is not None:
                raise PriorswapError(f"a Guidance object carries its own weights: give scale= / image_scale= with a "
                                     f"method name (guidance='{guidance.name}', scale=...), or build the rule with "
                                     "the scales you want")
            rule = guidance
        elif guidance is None or isinstance(guidance, str):
            rule = self.guidance_for(guidance, scale, image_scale)
        else:
            rule = guidance  # check_guidance names what it is
        self.check_guidance(rule)
        if callback is not None and not callable(callback):
            raise PriorswapError(f"callback must be a function taking a StepInfo, got {callback!r}")
        autocast = as_dtype(autocast, "autocast", ("float16", "bfloat16"))
        if not isinstance(parallel_forwards, bool):
            raise PriorswapError(f"parallel_forwards must be True or False, got {_short(parallel_forwards)}")
        rec = self.model.resolved.entry.recommended
        args = self.inputs(inputs, **task_inputs)
        steps = rec.steps if steps is None else steps
        model = self.model.denoiser
        trained = int(model.scheduler_config.get("num_train_timesteps", 1000))
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= trained:
            raise PriorswapError(f"steps must be a whole number from 1 to {trained} (the model's training timesteps), "
                                 f"got {steps!r}")
        eta = rec.eta if eta is None else eta
        if not 0.0 <= _number(eta, "eta (DDIM stochasticity)") <= 1.0:
            raise PriorswapError(f"eta (DDIM stochasticity) must be between 0 and 1, got {eta:g}")
        conditions = {("model", lvl): c for lvl, c in self.task.conditions(args, model).items()}
        if self.prior is not None:
            prior = self.prior.denoiser
            conditions[("prior", "null")] = prior.null_condition()
            if any(t.role == "prior" and t.level != "null" for t in rule.terms):
                conditions.update(
                    {("prior", lvl): c for lvl, c in self.task.conditions(args, prior).items() if lvl != "null"}
                )
        shape = self.task.latent_shape(args)
        if num_samples > 1:
            conditions = {k: _repeat_inputs(c, shape[0], num_samples) for k, c in conditions.items()}
            shape = (shape[0] * num_samples, *shape[1:])
        scheduler = scheduler or rec.scheduler
        sched = make_scheduler(scheduler, model.scheduler_config)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        from diffusers.utils.torch_utils import randn_tensor

        if noise is not None and (not isinstance(noise, torch.Tensor) or tuple(noise.shape) != tuple(shape)):
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise PriorswapError(f"noise must be a tensor of shape {tuple(shape)} (the task's latent shape × "
                                 f"num_samples), got {got}")
        # drawn even when noise is given, so that DDIM's η noise that follows is the seed's either way
        start = randn_tensor(shape, generator=generator, dtype=model.dtype)
        if noise is not None:
            start = noise.to(model.dtype)
        sampler = Sampler(self.routes, conditions, rule, sched, parallel_forwards=parallel_forwards)
        mixed = torch.autocast(model.device.type, dtype=autocast) if autocast is not None else nullcontext()
        with mixed:
            latents = sampler.run(start.to(model.device), steps, callback, eta=eta, generator=generator)
        images = self.task.decode_with(latents, args) if decode else None
        record = run_record(self, rule, args, steps=steps, scheduler=scheduler, eta=eta, seed=seed,
                            num_samples=num_samples, autocast=autocast,
                            noise="seed" if noise is None else "given", parallel_forwards=sampler.ran_parallel)
        return SampleResult(latents, images, rule, seed, steps, dict(sampler.forward_calls), record)


def _input_problem(error: dict) -> str:
    """One pydantic error in Python words: `class_label[0] = 207: Input should be less than 10`."""
    loc = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{loc}: required, not given"
    return f"{loc} = {_short(error.get('input'))}: {message}" if loc else message


def _short(value: Any, limit: int = 80) -> str:
    """A value for an error message: a tensor or array by its type, shape and dtype, anything else by its repr
    cut to `limit` characters."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {tuple(shape)}, {value.dtype}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# keywords of other samplers (diffusers, the CLI) that `Pair.sample` spells otherwise
_SAMPLING_NAMES = {"guidance_scale": "scale", "image_guidance_scale": "image_scale", "num_inference_steps": "steps",
                   "seeds": "seed (one per call)", "method": "guidance", "generator": "seed",
                   "num_images_per_prompt": "num_samples", "batch": "num_samples", "latents": "noise",
                   "output_type": "decode"}


def _sampling_hint(errors: list[dict]) -> str:
    """"; did you mean scale=?" for task-input errors that are sampling options under another name."""
    hints = [f"{e['loc'][0]}= → {_SAMPLING_NAMES[e['loc'][0]]}=" for e in errors
             if e["type"] == "extra_forbidden" and e["loc"] and e["loc"][0] in _SAMPLING_NAMES]
    return f"; sampling options are spelled otherwise: {', '.join(hints)}" if hints else ""


def _example(task: Task) -> str:
    """`class_label=...` for the task's first input: an example call in an error message."""
    return ", ".join(f"{name}=..." for name in list(task.Inputs.model_fields)[:1])


def role_problem(resolved: Resolved, role: str) -> str | None:
    """Why `resolved` cannot serve as `role` ("model" or "prior"): its registry entry does not list that role;
    None when it can. `load_pair` refuses such a pair with this message, `priorswap pairs` shows it."""
    roles = resolved.entry.roles
    if role in roles:
        return None
    return f"'{resolved.id}' cannot be used as a {role} (its registry entry lists roles: {', '.join(roles)})"


def load_pair(
    model: str | os.PathLike,
    prior: str | os.PathLike | None = None,
    *,
    registry_files: list[str] | tuple[str, ...] = (),
    offline: bool | None = None,
    allow_pickle: bool = False,
    dtype: torch.dtype | str | None = None,
    device: str = "cpu",
    match: str = "continuous",
    adapters: bool = True,
    plugins: Plugins | None = None,
    prior_dtype: torch.dtype | str | None = None,
    offload: bool = False,
) -> Pair:
    """Loads a fine-tuned model and (optionally) a prior, by registry id or local folder.

    `match` is the σ-matching for priors on another schedule (continuous or nearest);
    `adapters=False` is an ablation that feeds the prior the model's raw timestep and reads its
    output as the model's parameterization (the latent-space, size and frame maps it needs stay).
    Raises IncompatiblePair naming the missing adapter when the registry cannot bridge the pair.
    `dtype` / `prior_dtype` set the weights' dtypes, as torch dtypes or names ("fp16", "bf16"; the prior's
    defaults to the model's); `offload` keeps the networks in CPU memory and moves each to `device` only for
    its forward pass (accelerate's cpu_offload).
    """
    if match not in MATCHES:
        raise PriorswapError(f"σ-matching must be one of {', '.join(MATCHES)}, got {match!r}")
    device = checks.device(device, option="device", allow_meta=True)  # before any weights load
    dtype, prior_dtype = as_dtype(dtype, "dtype"), as_dtype(prior_dtype, "prior_dtype")
    for role, ref in (("model", model), ("prior", prior)):
        if ref is not None and not isinstance(ref, str | os.PathLike):
            raise PriorswapError(
                f"load_pair takes the {role} as a registry id or a folder, got a {type(ref).__name__}; to sample "
                "with Denoiser objects you built yourself, give them to priorswap.Sampler (docs/python-api.md, "
                "\"Your own denoisers\")")
    model, prior = os.fspath(model), (os.fspath(prior) if prior is not None else None)
    plugins = plugins or get_plugins()
    registry = plugins.load_registry(registry_files)
    load_device = "cpu" if offload else device
    options = {"offline": offline, "allow_pickle": allow_pickle, "dtype": dtype, "device": load_device}
    model_res = resolve(model, registry, plugins, allow_pickle=allow_pickle)
    prior_res = resolve(prior, registry, plugins, allow_pickle=allow_pickle) if prior is not None else None
    for resolved, role in ((model_res, "model"), (prior_res, "prior")):  # before any weights load
        problem = role_problem(resolved, role) if resolved is not None else None
        if problem is not None:
            raise RegistryError(problem)
    plan = None
    if prior_res is not None:
        plan = plan_pair(model_res.spec(), prior_res.spec(), plugins.bridges, match)
        if not plan.ok:
            raise IncompatiblePair(f"'{model}' cannot use '{prior}' as its prior: {plan.reason}")
    loaded_model = load(model_res, "model", plugins, **options)
    loaded_prior = None
    if prior_res is not None:
        # the model as its own prior shares its network (one forward for both branches), unless asked for
        # another dtype, which takes a second copy
        same = prior_res.id == model_res.id and prior_dtype in (None, loaded_model.denoiser.dtype)
        prior_options = {**options, "dtype": prior_dtype or dtype}
        loaded_prior = loaded_model if same else load(prior_res, "prior", plugins, **prior_options)
    if offload:
        for loaded in {id(x): x for x in (loaded_model, loaded_prior) if x is not None}.values():
            offload_denoiser(loaded.denoiser, device)
    _, task_cls = task_of(model_res.entry, model, plugins)
    task = task_cls(loaded_model.denoiser, loaded_model.folder)
    return Pair(loaded_model, loaded_prior, plan, task, match, adapters, plugins)


def load_denoiser(
    ref: str | os.PathLike,
    role: str = "prior",
    *,
    registry_files: list[str] | tuple[str, ...] = (),
    offline: bool | None = None,
    allow_pickle: bool = False,
    dtype: torch.dtype | str | None = None,
    device: str = "cpu",
    plugins: Plugins | None = None,
) -> Any:
    """One network by registry id, local folder or checkpoint file, as the `Denoiser` it serves as in `role`
    ("prior" or "model"), without a pair: e.g. a registry prior for a model of your own, sampled through
    `priorswap.Sampler` (docs/python-api.md). Loads what `load_pair` would load for that role; raises
    RegistryError when the entry does not list `role`."""
    if role not in ("model", "prior"):
        raise PriorswapError(f"role must be 'model' or 'prior', got {role!r}")
    if not isinstance(ref, str | os.PathLike):
        raise PriorswapError(f"load_denoiser takes a registry id, a folder or a checkpoint file, got a "
                             f"{type(ref).__name__}")
    device = checks.device(device, option="device", allow_meta=True)
    dtype = as_dtype(dtype, "dtype")
    plugins = plugins or get_plugins()
    resolved = resolve(os.fspath(ref), plugins.load_registry(registry_files), plugins, allow_pickle=allow_pickle)
    problem = role_problem(resolved, role)
    if problem is not None:
        raise RegistryError(problem)
    return load(resolved, role, plugins, offline=offline, allow_pickle=allow_pickle, dtype=dtype,
                device=device).denoiser
