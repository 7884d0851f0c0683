"""The `priorswap` command line (typer + rich). Heavy libraries are imported only inside commands."""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .dtypes import parse_dtype
from .errors import PriorswapError


def _plain_placeholder(param: Any, ctx: Any) -> None:
    """Help shows what an option takes: nothing for a flag (typer ≥ 0.2x prints `<bool>`, as if `--offline`
    took a value) and the item for a repeatable option (`<str>`, not `<list[str]>`). An explicit metavar and
    an argument (whose name is its placeholder) stay as they are."""
    if getattr(param, "metavar", "") is not None or not hasattr(param, "is_flag"):
        return
    if param.is_flag:
        param.metavar = ""
    elif param.multiple and hasattr(param, "display_type"):
        param.metavar = re.sub(r"^<list\[(.*)\]>$", r"<\1>", param.display_type(ctx))


def _plain_placeholders(command: Any, ctx: Any) -> None:
    """`_plain_placeholder` for every option of a command and of every command under it, plugins' included."""
    for param in command.get_params(ctx):
        _plain_placeholder(param, ctx)
    for sub in getattr(command, "commands", {}).values():
        _plain_placeholders(sub, ctx)


class _Group(typer.core.TyperGroup):
    """The root command: its help and every subcommand's show plain placeholders (`_plain_placeholder`)."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)
        for param in params:
            _plain_placeholder(param, ctx)
        return params

    def get_command(self, ctx: Any, name: str) -> Any:
        command = super().get_command(ctx, name)
        if command is not None:
            _plain_placeholders(command, ctx)
        return command


app = typer.Typer(
    cls=_Group,
    help="Borrow the unconditional half of classifier-free guidance from a stronger prior.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# piped (not a terminal): wide enough that tables keep one row per line instead of 80 folded columns
console = Console() if sys.stdout.isatty() or os.environ.get("COLUMNS") else Console(width=160)
err = Console(stderr=True, soft_wrap=True)  # messages stay one line each when stderr is piped

MODEL_HELP = "Fine-tuned model: registry id, local diffusers folder or checkpoint file (FILE or FILE#variant)."
PRIOR_HELP = "Prior: registry id, local folder or checkpoint file (omit for plain CFG)."
RegistryOpt = Annotated[
    list[str] | None,
    typer.Option("--registry", help="Extra registry YAML file(s) on top of the shipped one (repeatable)."),
]


def quiet_transformers() -> None:
    """Silences transformers' own progress bars ("Loading weights", "Writing model shards") for a command that
    loads models; priorswap's rich bars stay, and so do the hub's download bars (the global
    `transformers.utils.logging.disable_progress_bar()` would hide those too). Imports transformers: call it
    inside a command only."""
    try:
        from transformers.utils import logging
    except ImportError:
        return
    if hasattr(logging, "set_tqdm_hook"):  # transformers ≥ 5
        logging.set_tqdm_hook(lambda factory, args, kwargs: logging.EmptyTqdm(*args, **kwargs))
    else:  # older releases: the flag their bars read (disable_progress_bar() would also set the hub's)
        logging._tqdm_active = False


def _registry(extra: list[str] | None):
    from .plugin_manager import get_plugins

    plugins = get_plugins()
    return plugins.load_registry(extra or []), plugins


@app.command("list")
def list_(registry: RegistryOpt = None) -> None:
    """List models, priors and latent spaces in the registry."""
    reg, _ = _registry(registry)
    for role, title in (("model", "Fine-tuned models"), ("prior", "Priors")):
        table = Table(title=title, title_justify="left")
        table.add_column("id", no_wrap=True)
        for col in ("plugin", "latent space", "schedule", "param.", "res.", "source", "defined in"):
            table.add_column(col, overflow="fold")
        for key, e in reg.with_role(role).items():
            space = e.latent_space if isinstance(e.latent_space, str) else "inline"
            table.add_row(key, e.plugin, space, e.schedule.key(), e.parameterization, str(e.resolution),
                          e.source.describe(), _origin_text(reg.origin(key), reg.overrides(key)))
        console.print(table)
    table = Table(title="Latent spaces", title_justify="left")
    for col in ("name", "channels", "scale", "shift", "downsample", "family", "defined in"):
        table.add_column(col, overflow="fold")
    for key, s in reg.latent_spaces.items():
        table.add_row(key, str(s.channels), f"{s.scale:g}", f"{s.shift:g}", str(s.downsample), s.family,
                      _origin_text(reg.space_origin(key), reg.space_overrides(key)))
    console.print(table)


def _origin_text(origin: str, replaced: list[str]) -> str:
    """Where a registry definition came from, and which earlier definitions of the same name it overrides."""
    return origin + (f" (overrides {', '.join(replaced)})" if replaced else "")


@app.command()
def pairs(
    model: Annotated[str | None, typer.Argument(help=MODEL_HELP)] = None,
    prior: Annotated[str | None, typer.Option(help="Check one prior (id, folder or file) instead of all.")] = None,
    model_option: Annotated[str | None, typer.Option(
        "--model", help="The same as MODEL, spelled as `sample` takes it.")] = None,
    match: Annotated[str, typer.Option(help="σ-matching: continuous or nearest.")] = "continuous",
    allow_pickle: Annotated[bool, typer.Option(
        "--allow-pickle", help="Allow reading the tensor names of a pickled checkpoint file (weights_only).")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Show which priors pair with MODEL and the adapters that would be inserted."""
    from . import checks
    from .adapters import Plan, plan_pair
    from .api import MATCHES, role_problem
    from .loading import compatible_priors, resolve

    if model is None or model_option is None:
        model = model or model_option
    elif model != model_option:
        raise PriorswapError(f"two models given ('{model}' and --model '{model_option}'); give one")
    if model is None:
        raise PriorswapError("which model? `priorswap pairs MODEL` (or --model MODEL)")
    checks.one_of(match, "--match", MATCHES)
    reg, plugins = _registry(registry)
    model_res = resolve(model, reg, plugins, allow_pickle=allow_pickle)
    if prior is not None:
        prior_res = resolve(prior, reg, plugins, allow_pickle=allow_pickle)
        # the roles first, in the words `sample` refuses them with (load_pair checks them before the plan)
        problem = role_problem(model_res, "model") or role_problem(prior_res, "prior")
        plans = [Plan(prior_res.id, reason=problem) if problem else
                 plan_pair(model_res.spec(), prior_res.spec(), plugins.bridges, match)]
    else:
        plans = compatible_priors(model, reg, plugins, match, allow_pickle=allow_pickle)
        problem = role_problem(model_res, "model")
        if problem:  # every registry prior is a prior, but MODEL is not a model: no pair samples
            plans = [Plan(plan.prior, reason=problem) for plan in plans]
    table = Table(title=f"Priors for {model}", title_justify="left", show_lines=True)
    table.add_column("prior")
    table.add_column("pairs")
    table.add_column("adapters inserted / reason")
    for plan in plans:
        if plan.ok:
            table.add_row(plan.prior, "[green]yes[/]", "\n".join(plan.lines()) or "none (same space and schedule)")
        else:
            table.add_row(plan.prior, "[red]no[/]", plan.reason or "")
    console.print(table)


def _parse_task_options(args: list[str]) -> dict[str, Any]:
    """`--class-label 1 --class-label 2 --flag` → {"class_label": ["1", "2"], "flag": True}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise PriorswapError(f"unexpected argument '{arg}'")
        name, eq, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        out.setdefault(key, []).append(value)
        i += 1
    return out


def _is_list(annotation: Any) -> bool:
    """list[...] or an Optional/Union containing one."""
    import typing

    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set):
        return True
    return any(_is_list(arg) for arg in typing.get_args(annotation)) if origin is not None else False




def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PriorswapError(f"{option} takes comma-separated integers, got '{text}'") from None
    return _distinct(values, option)


def parse_task_inputs(task: Any, raw: dict[str, list[str]]) -> Any:
    """A task's validated inputs from parsed `--field value` options (lists for repeated ones; `--no-flag`
    for a bool field); a PriorswapError in the options' words (`--class-label (value 1, got '99'): ...`)."""
    from pydantic import ValidationError

    fields = task.Inputs.model_fields
    raw = dict(raw)
    for key in [k for k in raw if k.startswith("no_") and k not in fields]:  # --no-flag for a bool field
        flag = key.removeprefix("no_")
        if flag in fields and fields[flag].annotation in (bool, bool | None) and raw[key] == ["true"]:
            if flag in raw:
                raise PriorswapError(f"--{flag.replace('_', '-')} and --{key.replace('_', '-')} contradict; "
                                     "give one")
            raw[flag] = ["false"]
            del raw[key]
    unknown = [k for k in raw if k not in fields]
    options = ", ".join("--" + f.replace("_", "-") for f in fields)
    if unknown:
        raise PriorswapError(
            f"unknown option(s) {', '.join('--' + k.replace('_', '-') for k in unknown)} for task "
            f"'{task.name}'; its options are: {options}"
        )
    values: dict[str, Any] = {}
    for key, vals in raw.items():
        if not _is_list(fields[key].annotation) and len(vals) > 1:
            raise PriorswapError(f"--{key.replace('_', '-')} takes one value for task '{task.name}', got {len(vals)} "
                                 f"({', '.join(vals)}); run once per value")
        values[key] = vals if _is_list(fields[key].annotation) else vals[-1]
    try:
        return task.Inputs.model_validate(values)
    except ValidationError as e:
        problems = "; ".join(_problem(x) for x in e.errors())
        raise PriorswapError(f"bad input for task '{task.name}': {problems} (options: {options})") from None


def _problem(error: dict) -> str:
    """One pydantic error as the CLI user sees it: `--class-label (value 2, got '99'): Input should be ...`."""
    message = error["msg"].removeprefix("Value error, ")
    loc = [str(part) for part in error["loc"]]
    if not loc:
        return message
    where = "--" + loc[0].replace("_", "-")
    given = error.get("input")
    # pydantic's own checks do not repeat the value; a task's validators (type "value_error") word their own
    shown = isinstance(given, str | int | float) and error["type"] not in ("missing", "value_error")
    got = f"got '{given}'" if shown else ""
    if len(loc) > 1 and loc[1].isdigit():
        where += f" (value {int(loc[1]) + 1}" + (f", {got})" if got else ")")
    elif got:
        where += f" ({got})"
    return f"{where}: {message}"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sample(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    prior: Annotated[str | None, typer.Option(help=PRIOR_HELP)] = None,
    method: Annotated[
        str | None,
        typer.Option(help="cfg, prior-swap, autoguidance, dual-cfg, dual-prior-swap (default: swap if --prior)."),
    ] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale γ (text scale for dual).")] = None,
    image_guidance: Annotated[float | None, typer.Option(help="Image scale γ_I for dual guidance.")] = None,
    rescale: Annotated[float, typer.Option(help="Guidance rescale φ (Lin et al.), 0 = off.")] = 0.0,
    interval: Annotated[str | None, typer.Option(help="Apply guidance only for σ in LO,HI.")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps (default: the registry's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    seeds: Annotated[str | None, typer.Option(help="Several seeds, comma-separated (overrides --seed).")] = None,
    num_samples: Annotated[int, typer.Option(
        "--num-samples", "--batch", help="Samples per task input and seed, in one batch.")] = 1,
    scheduler: Annotated[str | None, typer.Option(help="ddim (default), euler or native.")] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM η: 0 deterministic, 1 stochastic (default: registry).")]
    = None,
    match: Annotated[str, typer.Option(help="σ-matching for priors on another schedule: continuous or nearest.")]
    = "continuous",
    out: Annotated[Path | None, typer.Option(help="PNG file for the decoded images (a grid if several).")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Folder for one PNG per sample (seed<S>-<i>.png).")] = None,
    save_latents: Annotated[
        Path | None, typer.Option(help="Write the final latent (one tensor, 'latents') to this .safetensors.")
    ] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never contact the hub; use cached weights only.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option(
            "--allow-pickle", help="Allow pickled .bin weights (loaded with torch.load(weights_only=True)).")
    ] = False,
    dtype: Annotated[str, typer.Option(help="Model weights dtype: fp32, fp16 or bf16.")] = "fp32",
    prior_dtype: Annotated[str | None, typer.Option(help="Prior weights dtype (default: --dtype).")] = None,
    autocast: Annotated[
        str | None, typer.Option(help="Run the networks under torch.autocast in fp16/bf16 (weights keep --dtype).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, mps (default: cuda if available).")] = None,
    offload: Annotated[
        bool, typer.Option(
            "--offload", help="Keep networks in CPU memory, move each to the device per forward (accelerate).")
    ] = False,
    parallel_forwards: Annotated[
        bool, typer.Option(
            "--parallel-forwards", help="CPU: run the model's and the prior's forwards (CFG: the halves of the "
            "batch) at once, each on its share of the threads (faster for big networks, one sample).")
    ] = False,
    registry: RegistryOpt = None,
) -> None:
    """Sample a fine-tuned model with guidance from a prior. Task inputs follow as options,
    e.g. `--class-label 207` for class-conditional models (`priorswap tasks --model ID` lists them)."""
    from . import checks

    raw = _parse_task_options(list(ctx.args))
    if out is None and out_dir is None and save_latents is None:
        raise PriorswapError("nothing would be written: pass --out FILE.png, --out-dir DIR and/or "
                             "--save-latents FILE.safetensors")
    for path, suffix, option in ((out, ".png", "--out"), (save_latents, ".safetensors", "--save-latents")):
        if path is not None:
            if path.suffix.lower() != suffix:
                raise PriorswapError(f"{option} {path} should end in {suffix} (priorswap writes "
                                     f"{'PNG images' if suffix == '.png' else 'latents as safetensors'})")
            checks.writable_file(path, option)
    if out_dir is not None:
        checks.writable_folder(out_dir, "--out-dir")
    lo_hi = _interval(interval)
    seed_list = [seed] if seeds is None else _ints(seeds, "--seeds")
    for s in seed_list:
        checks.seed(s, "--seed" if seeds is None else "--seeds")
    _check_out_and_out_dir(out, out_dir, seed_list)
    if num_samples < 1:
        raise PriorswapError(f"--num-samples (--batch) must be at least 1, got {num_samples}")
    check_sampling_options(method, guidance, image_guidance, rescale, steps, eta, match, scheduler)
    mixed = parse_autocast(autocast)
    device = checks.device(device)
    if prior_dtype is not None and prior is None:
        raise PriorswapError("--prior-dtype needs --prior (without a prior, --dtype sets the model's weights)")
    if parallel_forwards and not device.startswith("cpu"):
        raise PriorswapError(f"--parallel-forwards runs forwards side by side on CPU threads, but the networks run "
                             f"on {device}: leave it off there, or add --device cpu")

    import torch

    from .api import load_pair

    # before any weights load: the task inputs, and the options that depend on the model's entry and task
    entry, task_cls = _check_task_inputs(model, raw, registry, allow_pickle)
    check_options_for_model(entry, task_cls, prior is not None, method, image_guidance, steps, eta, scheduler)
    quiet_transformers()

    with err.status(f"loading {model}" + (f" and {prior}" if prior else "")):
        pair = load_pair(
            model, prior, registry_files=registry or [], offline=offline or None, allow_pickle=allow_pickle,
            match=match, dtype=parse_dtype(dtype, "--dtype"),
            prior_dtype=parse_dtype(prior_dtype, "--prior-dtype") if prior_dtype else None, device=device,
            offload=offload,
        )
    inputs = parse_task_inputs(pair.task, raw)
    check_options_for_weights(pair, steps, eta, scheduler)
    decode = out is not None or out_dir is not None
    if decode and not pair.task.can_decode():  # before minutes of sampling
        raise PriorswapError(f"'{model}' has no decoder here (no vae/ folder), so --out/--out-dir cannot be "
                             "written; use --save-latents instead")
    rule = pair.guidance_for(method, guidance, image_guidance).with_options(rescale=rescale, interval=lo_hi)
    if pair.inserted:
        err.print(f"[dim]adapters: {'; '.join(pair.inserted)}[/]")
    rows = pair.task.batch_size(inputs) * num_samples
    if not parallel_forwards and _parallel_would_help(pair, rule, device, rows):
        err.print("[dim]tip: --parallel-forwards runs the model's and the prior's forwards at once on the CPU "
                  "(faster for networks this size)[/]")
    from .media import progress_callback

    n_steps = steps or pair.model.resolved.entry.recommended.steps
    err.print(f"guidance: {rule_text(rule)}, {n_steps} steps")
    from .provenance import command_line

    command = command_line()
    latents, images, names, records = [], [], [], []
    for s in seed_list:
        label = rule_text(rule) + (f" seed {s}" if len(seed_list) > 1 else "")
        with progress_callback(n_steps, label, err) as callback:
            result = pair.sample(inputs, guidance=rule, steps=n_steps, seed=s, scheduler=scheduler,
                                 callback=callback, decode=decode, num_samples=num_samples, eta=eta,
                                 autocast=mixed, parallel_forwards=parallel_forwards)
        if decode and result.images is None:  # a task whose can_decode promised more than decode gave
            raise PriorswapError(f"'{model}' has no decoder (vae/ folder); use --save-latents instead")
        latents.append(result.latents.float().cpu())
        if result.images is not None:
            images.append(result.images.float().cpu())
        names += [f"seed{s}-{i:02d}" for i in range(result.latents.shape[0])]
        records += [{**result.record, "index": i, "command": command} for i in range(result.latents.shape[0])]
    from .media import all_or_nothing, input_rows, save_grid, save_images, write_atomic_safetensors

    # the latents' record: every seed, and the samples' names in row order
    batch_record = {**records[0], "seed": seed_list if len(seed_list) > 1 else seed_list[0], "index": None,
                    "images": names}
    with all_or_nothing((out_dir,)) as written:  # a failed write removes the files this run already wrote
        if save_latents is not None:
            write_atomic_safetensors(save_latents, {"latents": torch.cat(latents)}, record=batch_record)
            written.append(save_latents)
        if out is not None:
            n_inputs, cells = pair.task.batch_size(inputs), torch.cat(images)
            per_input = len(seed_list) * num_samples
            if n_inputs > 1 and per_input > 1 and len(cells) == n_inputs * per_input:  # a row per task input
                order = input_rows(len(seed_list), n_inputs, num_samples)
                grid, columns = cells[order], per_input
                grid_record = {**batch_record, "images": [names[i] for i in order],
                               "grid": {"rows": n_inputs, "columns": columns, "row": "task input"}}
            else:
                grid, columns, grid_record = cells, None, batch_record
            save_grid(grid, out, columns=columns, record=grid_record)
            written.append(out)
        if out_dir is not None:
            written += save_images(torch.cat(images), out_dir, names, records)
    if save_latents is not None:
        err.print(f"latents → {save_latents}")
    if out is not None:
        err.print(f"images → {out}")
    if out_dir is not None:
        err.print(f"{len(names)} images → {out_dir}/")


PARALLEL_TIP_PARAMETERS = 100_000_000
"""Denoising networks from this size up gain from `--parallel-forwards` on a CPU (bench/step_time.py)."""


def _parallel_would_help(pair: Any, rule: Any, device: str, rows: int) -> bool:
    """When `sample` suggests --parallel-forwards: the CPU with at least two threads, big networks, one sample
    per step (`rows`: samples per branch; at four, side by side was slower, bench/step_time.py) and a step
    whose work splits evenly in two: a model and a prior forward with as many branches each, or one forward
    with an even number of rows. Uneven halves leave a thread idle."""
    import torch

    if not device.startswith("cpu") or torch.get_num_threads() < 2 or rows != 1:
        return False
    model, prior = (len({t.level for t in rule.terms if t.role == role and t.weight != 0.0})
                    for role in ("model", "prior"))
    even = model == prior if prior else model % 2 == 0  # one row per branch (rows == 1)
    if not even:
        return False
    net = getattr(pair.model.denoiser, "net", None)
    return isinstance(net, torch.nn.Module) and sum(p.numel() for p in net.parameters()) >= PARALLEL_TIP_PARAMETERS


def _check_task_inputs(
    model: str, raw: dict[str, list[str]], registry: list[str] | None, allow_pickle: bool
) -> tuple[Any, Any]:
    """The task options of `sample` validated, their files checked and the task's `check_inputs` run against
    the model's entry: everything a typo can break, without loading weights. Returns (entry, task class)."""
    from .loading import resolve, task_of

    reg, plugins = _registry(registry)
    resolved = resolve(model, reg, plugins, allow_pickle=allow_pickle)
    _, task_cls = task_of(resolved.entry, model, plugins)
    inputs = parse_task_inputs(task_cls, raw)
    check_input_files(inputs)
    task_cls.check_inputs(inputs, resolved.entry)
    return resolved.entry, task_cls


def _check_out_and_out_dir(out: Path | None, out_dir: Path | None, seeds: list[int]) -> None:
    """--out must not be --out-dir itself, nor one of the per-sample files --out-dir writes (seed<S>-<i>.png)."""
    if out is None or out_dir is None:
        return
    target, folder = out.resolve(), out_dir.resolve()
    if target == folder:
        raise PriorswapError(f"--out {out} and --out-dir {out_dir} are the same path; give the grid another name")
    match = re.fullmatch(r"seed(\d+)-(\d+)\.png", target.name)
    if target.parent == folder and match and int(match[1]) in seeds and target.name == (
            f"seed{int(match[1])}-{int(match[2]):02d}.png"):
        raise PriorswapError(f"--out {out} is one of the files --out-dir {out_dir} writes (seed<S>-<i>.png, one per "
                             "sample): the grid would be overwritten; give it another name or folder")


def check_options_for_model(
    entry: Any, task_cls: Any, has_prior: bool, method: str | None, image_guidance: float | None,
    steps: int | None, eta: float | None, scheduler: str | None,
) -> None:
    """The sampling options checked against the model's registry entry and task class, before weights load."""
    from . import checks
    from .guidance import DUAL_METHODS, PRIOR_METHODS

    dual = "partial" in task_cls.levels
    if method is not None and dual != (method in DUAL_METHODS):
        fits = "dual-cfg, dual-prior-swap" if dual else "cfg, prior-swap, autoguidance"
        kind = "two conditions (dual guidance)" if dual else "one condition"
        raise PriorswapError(f"--method {method} does not fit task '{task_cls.name}', which has {kind}; "
                             f"use {fits}")
    if method in PRIOR_METHODS and not has_prior:
        raise PriorswapError(f"--method {method} needs a prior: pass --prior PRIOR "
                             "(`priorswap pairs MODEL` lists the priors that pair with MODEL)")
    checks.image_guidance(image_guidance, task_cls)
    checks.steps(steps, entry.schedule.num_train_timesteps)
    rec = entry.recommended
    kind = scheduler or rec.scheduler
    if kind == "euler":  # "native" is known only once its scheduler config is read (check_options_for_weights)
        _check_eta(eta, rec.eta, "euler")


def _check_eta(eta: float | None, recommended: float, scheduler: str) -> None:
    """A stochastic DDIM η (given, or the registry's) with a scheduler that is not DDIM."""
    if eta:
        raise PriorswapError(f"--eta {eta:g} needs --scheduler ddim (η is DDIM's stochasticity; the sampler "
                             f"here is {scheduler})")
    if eta is None and recommended:
        raise PriorswapError(f"the registry entry's η={recommended:g} needs --scheduler ddim (the sampler here is "
                             f"{scheduler}); pass --eta 0 to sample with it deterministically")


def check_options_for_weights(pair: Any, steps: int | None, eta: float | None, scheduler: str | None) -> None:
    """What only the loaded weights' scheduler config tells, in the option's words: the training timesteps
    (--steps) and the class of the native scheduler (--eta)."""
    from . import checks

    config = pair.model.denoiser.scheduler_config
    checks.steps(steps, int(config.get("num_train_timesteps", 1000)))
    rec = pair.model.resolved.entry.recommended
    if (scheduler or rec.scheduler) == "native" and config.get("_class_name") != "DDIMScheduler":
        _check_eta(eta, rec.eta, f"native ({config.get('_class_name')})")


def check_input_files(inputs: Any) -> None:
    """Every file a task input names exists and is a file (inputs typed `ImageFile` are checked as they
    validate; this covers plain `Path` fields)."""
    for name, value in inputs:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, Path) and not item.is_file():
                what = "is a folder, not a file" if item.is_dir() else "does not exist"
                raise PriorswapError(f"--{name.replace('_', '-')} {item} {what}")


def _interval(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise PriorswapError(f"--interval takes LO,HI (two numbers), got '{text}'") from None
    if not (math.isfinite(lo) and lo <= hi):
        raise PriorswapError(f"--interval takes LO,HI with LO ≤ HI (σ values), got '{text}'")
    return lo, hi


def check_sampling_options(
    method: str | None, guidance: float | None, image_guidance: float | None, rescale: float | None,
    steps: int | None, eta: float | None, match: str, scheduler: str | None,
) -> None:
    """Range checks of the sampling options, before any weights load."""
    from . import checks
    from .api import MATCHES, SCHEDULERS
    from .guidance import METHODS

    if method is not None:
        checks.one_of(method, "--method", tuple(METHODS))
    checks.finite(guidance, "--guidance")
    checks.finite(image_guidance, "--image-guidance")
    checks.in_range(rescale, "--rescale", 0.0, 1.0)
    checks.in_range(eta, "--eta", 0.0, 1.0)
    if steps is not None and steps < 1:
        raise PriorswapError(f"--steps must be at least 1, got {steps}")
    checks.one_of(match, "--match", MATCHES)
    if scheduler is not None:
        checks.one_of(scheduler, "--scheduler", SCHEDULERS)


def parse_autocast(name: str | None) -> Any:
    """The dtype of `--autocast` (fp16 or bf16; None when not given)."""
    if not name:
        return None
    dtype = parse_dtype(name, "--autocast")
    if str(dtype) not in ("torch.float16", "torch.bfloat16"):
        raise PriorswapError(f"--autocast takes fp16 or bf16 (mixed precision), got {name}")
    return dtype


def rule_text(rule: Any) -> str:
    """'prior-swap γ=1.5', or for dual guidance 'dual-prior-swap γT=7.5 γI=1.5'."""
    weights = {t.branch: t.weight for t in rule.terms}
    if ("model", "partial") in weights:
        null = next((w for (_, level), w in weights.items() if level == "null"), 0.0)
        return f"{rule.name} γT={weights[('model', 'full')]:g} γI={1.0 - null:g}"
    return f"{rule.name} γ={rule.terms[0].weight:g}"


def _floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PriorswapError(f"{option} takes comma-separated numbers, got '{text}'") from None
    return _distinct(values, option)


def _distinct(values: list, option: str) -> list:
    """The values of a list option, each at most once (a repeat would overwrite a file or pool the same
    samples twice)."""
    if not values:
        raise PriorswapError(f"{option} needs at least one value")
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise PriorswapError(f"{option} repeats {', '.join(repeated)}: give each value once")
    return values


_TYPE_NAMES = ((bool, "BOOLEAN"), (int, "INTEGER"), (float, "FLOAT"), (str, "TEXT"), (os.PathLike, "PATH"))


def _bounds_text(metadata: list) -> str:
    """A field's numeric bounds (pydantic's ge/gt/le/lt) as ` 0 ≤ x < 10`, or "" when it has none."""
    low = next((f"{m.ge:g} ≤ " for m in metadata if getattr(m, "ge", None) is not None), "")
    low = low or next((f"{m.gt:g} < " for m in metadata if getattr(m, "gt", None) is not None), "")
    high = next((f" ≤ {m.le:g}" for m in metadata if getattr(m, "le", None) is not None), "")
    high = high or next((f" < {m.lt:g}" for m in metadata if getattr(m, "lt", None) is not None), "")
    return f" ({low}x{high})" if low or high else ""


def _type_text(annotation: Any) -> str:
    """A task input's type as `--help` shows option types: INTEGER, FLOAT, TEXT, PATH; `X...` for an option
    that repeats (a list), `[X]` for one that may be left out (None), `a|b` for a choice."""
    import enum
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        metadata = [m for a in args[1:] for m in getattr(a, "metadata", [a])]
        return _type_text(args[0]) + _bounds_text(metadata)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        text = " | ".join(_type_text(a) for a in kinds)
        return f"[{text}]" if len(kinds) < len(args) else text
    if origin in (list, tuple, set, frozenset):
        items = [a for a in args if a is not Ellipsis]
        kind, space, bounds = (_type_text(items[0]) if items else "VALUE").partition(" (")
        return kind + "..." + space + bounds  # INTEGER... (0 ≤ x < 10): each value within the bounds
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return "|".join(str(m.value) for m in annotation)
        for kind, name in _TYPE_NAMES:
            if issubclass(annotation, kind):
                return name
        return annotation.__name__.upper()
    return str(annotation).replace("typing.", "")


@app.command()
def tasks(
    model: Annotated[str | None, typer.Option(help="Show only the task of this model (id, folder or file).")] = None,
    allow_pickle: Annotated[bool, typer.Option(
        "--allow-pickle", help="Allow reading the tensor names of a pickled checkpoint file (weights_only).")] = False,
    registry: RegistryOpt = None,
) -> None:
    """The task inputs `sample` takes as options (and `eval --data` as item fields), task by task."""
    from .plugin_manager import get_plugins

    plugins = get_plugins()
    if model is not None:
        from .loading import task_for

        names = [task_for(model, registry or [], plugins, allow_pickle=allow_pickle)[0]]
    else:
        names = sorted(plugins.tasks)
    for name in names:
        task = plugins.task(name)
        title = f"task {name}" + (f" (model {model})" if model else "") + f", guidance levels: {', '.join(task.levels)}"
        table = Table(title=title, title_justify="left")
        for col in ("option", "type", "default", "meaning"):
            table.add_column(col, overflow="fold")
        for field_name, field in task.Inputs.model_fields.items():
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            table.add_row("--" + field_name.replace("_", "-"),
                          _type_text(field.annotation) + _bounds_text(field.metadata), default,
                          field.description or "")
        console.print(table)


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    prior: Annotated[
        list[str], typer.Option(help="Prior id(s) or folder(s); 'none' is plain CFG. Repeat or comma-separate.")
    ] = ["none"],  # noqa: B006
    data: Annotated[
        Path | None, typer.Option(help="Dataset folder holding items.jsonl (docs/eval.md). Without it, the "
                                       "task's built-in evaluator runs, if a plugin has one.")
    ] = None,
    guidance: Annotated[
        str | None, typer.Option(help="Guidance scales, comma-separated (text scale for dual guidance).")
    ] = None,
    image_guidance: Annotated[float | None, typer.Option(help="γ_I for dual guidance.")] = None,
    samples: Annotated[
        int | None, typer.Option(help="Samples per method, scale and seed (built-in evaluators).")
    ] = None,
    samples_per_item: Annotated[
        int | None, typer.Option(help="With --data: samples per item and seed (default 1).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="With --data: only the first N items.")] = None,
    metrics: Annotated[
        str | None, typer.Option(help="With --data: only these of the task's metrics, comma-separated (default all).")
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds, comma-separated (pooled into the CIs).")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps.")] = None,
    clip: Annotated[
        str | None,
        typer.Option(help="With --data: the CLIP model of the CLIP metrics: hub id (ID@REVISION pins one) or "
                          "folder. Default: openai/clip-vit-large-patch14"),
    ] = None,
    ablate_adapters: Annotated[
        bool, typer.Option("--ablate-adapters", help="Also run each prior without σ-matching and "
                                                     "parameterization conversion (naive timestep reuse).")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Folder for results.json, results.md and the images.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never contact the hub; use cached weights only.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow pickled .bin weights (read with torch.load, "
                                                  "weights_only=True).")
    ] = False,
    dtype: Annotated[str | None, typer.Option(help="Weights dtype: fp32 (default), fp16 or bf16.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, mps (default: cuda if available).")] = None,
    registry: RegistryOpt = None,
) -> None:
    """Measure a model with CFG and prior swaps over guidance scales and seeds, with bootstrap CIs:
    on a dataset folder (--data DIR, the task's metrics) or with the task's built-in evaluator."""
    from .family import resolve_ref
    from .plugin_manager import get_plugins

    priors = [p.strip() for item in prior for p in item.split(",") if p.strip()]
    if not priors:
        raise PriorswapError("--prior needs at least one value ('none' for plain CFG)")
    _distinct(priors, "--prior")
    dataset_only = {"--limit": limit, "--clip": clip, "--samples-per-item": samples_per_item, "--metrics": metrics}
    if data is None and any(v is not None for v in dataset_only.values()):
        given = [k for k, v in dataset_only.items() if v is not None]
        raise PriorswapError(f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} with --data DIR")
    if data is not None and samples is not None:
        raise PriorswapError("--samples is for built-in evaluators; with --data every item is sampled "
                             "--samples-per-item times per seed (and --limit picks the items)")
    from . import checks

    if out is not None:
        checks.writable_folder(out, "--out")
    for value, option, least in ((samples, "--samples", 2), (samples_per_item, "--samples-per-item", 1),
                                 (limit, "--limit", 1), (steps, "--steps", 1)):
        if value is not None and value < least:
            raise PriorswapError(f"{option} must be at least {least}, got {value}")
    scales = _floats(guidance, "--guidance") if guidance is not None else []
    for value in scales:
        checks.finite(value, "--guidance")
    checks.finite(image_guidance, "--image-guidance")
    if device is not None:  # left None when not given: a built-in evaluator refuses what it cannot honour
        device = checks.device(device)
    metric_list = [m.strip() for m in metrics.split(",") if m.strip()] if metrics is not None else None
    if metric_list:
        _distinct(metric_list, "--metrics")
    seed_list = _ints(seeds, "--seeds") if seeds else None
    for s in seed_list or []:
        checks.seed(s, "--seeds")
    from .dataset_eval import EvalRequest, run
    from .loading import task_and_entry
    from .provenance import command_line

    plugins = get_plugins()
    # before any weights load (and before the dataset is read): the options that depend on the model's task
    task_name, task_cls, entry = task_and_entry(model, registry or [], plugins, allow_pickle=allow_pickle)
    checks.image_guidance(image_guidance, task_cls)
    checks.steps(steps, entry.schedule.num_train_timesteps)
    request = EvalRequest(
        model=model, priors=[None if p.lower() == "none" else p for p in priors],
        guidance=_floats(guidance, "--guidance") if guidance is not None else None,
        image_guidance=image_guidance, samples=samples, seeds=seed_list,
        steps=steps, out=out, ablate_adapters=ablate_adapters, registry=registry or [], offline=offline,
        allow_pickle=allow_pickle, device=device, dtype=parse_dtype(dtype, "--dtype") if dtype else None,
        data=data, limit=limit, clip=clip, samples_per_item=1 if samples_per_item is None else samples_per_item,
        metrics=metric_list, command=command_line(),
    )
    quiet_transformers()
    if data is not None:
        run(request)
        return
    evaluator = plugins.evaluators.get(task_name)
    if evaluator is None:
        raise PriorswapError(
            f"no built-in evaluator for task '{task_name}' of '{model}': pass --data DIR, a folder with "
            "items.jsonl (one task input per line; the format is documented in docs/eval.md)"
        )
    resolve_ref(evaluator)(request)


@app.command()
def doctor(registry: RegistryOpt = None) -> None:
    """Check the environment, plugins, registry and cache."""
    from .doctor import report

    ok = report(console, registry or [])
    raise typer.Exit(0 if ok else 1)


@app.command()
def cache(
    clear: Annotated[list[str] | None, typer.Option(
        help="Delete a kind of cached data: converted, pickles, null, checkpoints or all (repeatable).")] = None,
) -> None:
    """Show what priorswap keeps in its cache (sizes on disk), or clear it; all of it can be rebuilt."""
    from .cache import clear as clear_kinds
    from .cache import items
    from .nullcache import cache_home, checked_home

    checked_home()  # a cache setting that names a file is not an empty cache
    if clear:
        gone = clear_kinds([k for value in clear for k in value.split(",") if k])
        freed = sum(item.bytes for item in gone)
        console.print(f"deleted {len(gone)} cached item(s), {freed / 2**30:.2f} GiB freed from {cache_home()}")
        return
    found = items()
    table = Table(title=f"priorswap cache: {cache_home()}", title_justify="left")
    for col in ("kind", "holds", "size", "path"):
        table.add_column(col)
    for item in found:
        table.add_row(item.kind, item.what, f"{item.bytes / 2**20:,.1f} MiB", str(item.path))
    console.print(table if found else f"the cache at {cache_home()} is empty")
    console.print(f"total {sum(i.bytes for i in found) / 2**30:.2f} GiB; hub downloads live in the Hugging Face "
                  "cache (`hf cache scan`)")


def _source_text(role: dict | None) -> str:
    from .registry import Source

    if role is None:
        return "—"
    try:
        where = Source.model_validate(role["source"]).describe()
    except ValueError:  # a record written by another version: show it as stored
        where = str(role["source"])
    return f"{role['id']} — {where}, {role['dtype']}"


def _grid_column_rows(rec: dict) -> list[tuple[str, str]]:
    """`info` rows of an `eval --data` samples.png record: its grid, and each column's prior and guidance."""
    from .provenance import formula

    grid = rec.get("eval") or {}
    rows = [("grid", f"rows (items) {', '.join(map(str, grid.get('rows', [])))}; columns "
                     f"{' | '.join(grid.get('columns', []))}; dataset {grid.get('data')}")]
    for label, column in rec["columns"].items():
        g = column.get("guidance") or {}
        terms = formula([(t["weight"], t["role"], t["level"]) for t in g.get("terms", [])])
        adapters = "; ".join(column.get("adapters") or [])
        rows.append((label, f"prior {_source_text(column.get('prior'))}; {g.get('method')}: x̂0 = {terms}"
                            + (f"; adapters: {adapters}" if adapters else "")))
    return rows


@app.command()
def info(
    files: Annotated[list[Path], typer.Argument(help="PNG, GIF, MP4 or safetensors files written by priorswap.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON record(s), one per line.")] = False,
) -> None:
    """Show how a file was made: models and their pinned sources, guidance, steps, seed, device, inputs (with
    their files' sha256), command."""
    import json

    from .provenance import dumps, formula, read_record

    records = [(path, read_record(path)) for path in files]  # every file checked before anything prints
    for path, rec in records:
        if as_json:
            typer.echo(dumps(rec))
            continue
        table = Table(title=str(path), title_justify="left", show_header=False)
        table.add_column("field", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        g = rec.get("guidance") or {}
        terms = formula([(t["weight"], t["role"], t["level"]) for t in g.get("terms", [])])
        rows = [
            ("model", _source_text(rec.get("model"))),
            ("prior", _source_text(rec.get("prior"))),
            ("adapters", "; ".join(rec.get("adapters") or []) or "none"),
            ("guidance", f"{g.get('method')}: x̂0 = {terms}"
             + (f", rescale φ={g['rescale']:g}" if g.get("rescale") else "")
             + (f", σ interval {g['interval']}" if g.get("interval") else "")),
            ("sampling", f"{rec.get('steps')} steps, {rec.get('scheduler')}, η={rec.get('eta')}, seed {rec.get('seed')}"
             + (f", sample {rec['index']}" if rec.get("index") is not None else "")
             + (f", autocast {rec['autocast']}" if rec.get("autocast") else "")
             + (", parallel forwards" if rec.get("parallel_forwards") else "")),
            ("task", str(rec.get("task"))),
            ("inputs", json.dumps(rec.get("inputs"), ensure_ascii=False)),
        ]
        if isinstance(rec.get("columns"), dict):  # an `eval --data` samples.png: a prior and a rule per column
            rows[1:4] = _grid_column_rows(rec)
        if rec.get("input_sha256"):
            rows.append(("input files", "; ".join(
                f"{name}: sha256 {', '.join(map(str, v)) if isinstance(v, list) else v}"
                for name, v in rec["input_sha256"].items())))
        if rec.get("device"):
            rows.append(("device", f"{rec['device']}, torch {rec.get('torch')}"))
        rows.append(("priorswap", str(rec.get("priorswap"))))
        if rec.get("command"):
            rows.append(("command", rec["command"]))
        for row in rows:
            table.add_row(*row)
        console.print(table)


@app.command("check-golden")
def check_golden(
    folders: Annotated[list[Path], typer.Argument(help="Fixture folder(s) with fixture.json, or folders above them.")],
    skip_missing: Annotated[
        bool, typer.Option(
            "--skip-missing", help="Skip fixtures whose family no installed plugin checks (else they fail).")
    ] = False,
) -> None:
    """Run reference fixtures through their plugins; print every tensor's deviation; exit 0 only if all pass."""
    from .golden import check_fixture, find_all, read_fixture
    from .plugin_manager import get_plugins

    fixtures = find_all(folders)  # each fixture once, however it is reached
    checked = get_plugins().golden_checks
    passed = failed = skipped = 0
    for folder in fixtures:
        try:
            family = read_fixture(folder)["family"]
        except PriorswapError:
            family = None  # check_fixture reports what is wrong with it
        if skip_missing and family is not None and family not in checked:
            console.print(f"[dim]{folder}: skipped (no plugin checks '{family}')[/]")
            skipped += 1
            continue
        with err.status(f"checking {folder}"):
            result = check_fixture(folder)
        if result.error:
            console.print(f"[red]FAIL[/] {folder} ({result.family}): {result.error}")
            failed += 1
            continue
        table = Table(title=f"{folder} ({result.family})", title_justify="left")
        for col in ("tensor / check", "max |a−b|", "tolerance", "result"):
            table.add_column(col)
        for c in result.comparisons:
            tol = "—" if c.atol is None else f"atol {c.atol:g}" + (f", rtol {c.rtol:g}" if c.rtol else "")
            dev = "—" if c.max_abs is None else f"{c.max_abs:.3g}"
            verdict = "[green]ok[/]" if c.ok else "[red]FAIL[/]"
            table.add_row(c.name, dev, tol, verdict + (f" {c.detail}" if c.detail else ""))
        console.print(table)
        passed, failed = passed + result.ok, failed + (not result.ok)
    console.print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    raise typer.Exit(1 if failed or not passed else 0)


def main() -> None:
    """Entry point: user errors print a one-line message and exit with code 2."""
    from .plugin_manager import get_plugins

    get_plugins().add_commands(app)
    show = warnings.showwarning

    def show_ours(message, category, *args, **kwargs):  # priorswap's own warnings as one plain line
        if category.__module__.startswith("priorswap"):
            err.print(f"[yellow]warning:[/] {message}", soft_wrap=True)
        else:
            show(message, category, *args, **kwargs)

    with warnings.catch_warnings():  # restores showwarning when main returns (tests call main repeatedly)
        warnings.showwarning = show_ours
        try:
            code = app(standalone_mode=False)
        except PriorswapError as e:
            err.print(f"[red]error:[/] {e}")
            sys.exit(2)
        except typer.Exit as e:
            sys.exit(e.exit_code)
        except typer.Abort:
            err.print("aborted")
            sys.exit(1)
        except Exception as e:
            # typer >= 0.20 vendors click (typer._click); match either copy by class name
            if any(c.__name__ == "ClickException" for c in type(e).__mro__):
                e.show()
                sys.exit(2)
            raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
