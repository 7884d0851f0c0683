"""From a registry id or a local folder to a loaded denoiser, and the facts the pair planner uses."""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapters import PairSpec, Plan, plan_pair
from .checkpoints import checkpoint_entry, split_ref
from .configs import read_json
from .denoiser import Denoiser
from .errors import PluginError, PriorswapError, RegistryError, RegistryMismatchWarning, WeightsUnavailable
from .family import Family, LoadRequest, resolve_ref
from .hub import download_command, fetch, is_offline, retry_hint
from .latents import LatentSpace
from .plugin_manager import Plugins
from .registry import ModelEntry, Registry, ScheduleSpec, Source
from .task import Task


@dataclass
class Resolved:
    """A model reference made concrete: its id (or folder), entry and latent space. `file`: the registry file
    the entry came from (None for a local folder or checkpoint, described without an entry)."""

    id: str
    entry: ModelEntry
    latent_space: LatentSpace
    file: str | None = None

    def what(self) -> str:
        """How errors name it: "the registry entry 'ID' (in FILE)", or the folder / checkpoint itself."""
        return f"the registry entry '{self.id}' (in {self.file})" if self.file else f"'{self.id}'"

    def spec(self) -> PairSpec:
        e = self.entry
        return PairSpec(
            name=self.id,
            latent_space=self.latent_space,
            schedule_key=e.schedule.key(),
            parameterization=e.parameterization,
            modality=e.modality,
            resolution=e.resolution,
            learned_sigma=e.learned_sigma,
            fixed_size=e.fixed_size,
        )


@dataclass
class Loaded:
    resolved: Resolved
    folder: Path
    denoiser: Denoiser

    @property
    def id(self) -> str:
        return self.resolved.id


def read_model_index(folder: Path) -> dict:
    index = folder / "model_index.json"
    if not index.is_file():
        raise PriorswapError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json); "
            "pass a registry id (`priorswap list`) or a folder saved with save_pretrained"
        )
    return read_json(index)


def resolve(ref: str, registry: Registry, plugins: Plugins, *, allow_pickle: bool = False) -> Resolved:
    """A registry id, a local diffusers folder recognised by its model_index.json class name, or a local
    checkpoint file (`path/model.ckpt`, `path/model.ckpt#variant`) recognised by its tensor names."""
    path = Path(ref).expanduser()
    checkpoint = split_ref(ref)
    file = None  # the registry file of an id
    if checkpoint is not None:
        entry = checkpoint_entry(*checkpoint, plugins, allow_pickle=allow_pickle)
        ref_id = ref
    elif path.is_dir():
        class_name = read_model_index(path).get("_class_name", "?")
        family = plugins.family_for_pipeline(class_name)
        if family is None:
            known = sorted(c for f in plugins.families.values() for c in f.pipeline_classes)
            raise PriorswapError(
                f"{path}: no installed plugin handles pipeline class '{class_name}' "
                f"(handled: {', '.join(known) or 'none'}).{plugins.hint()}"
            )
        if family.describe is None:
            raise PriorswapError(f"the '{family.name}' plugin cannot describe local folders; add a registry entry")
        fields: dict[str, Any] = resolve_ref(family.describe)(path)
        fields.setdefault("roles", ["model", "prior"])
        entry = ModelEntry(plugin=family.name, source=Source(path=str(path.resolve())), **fields)
        ref_id = str(path)
    else:
        if ref not in registry.models and ("/" in ref or "\\" in ref or ref.startswith(".")):
            what = "is a file, not a model folder or checkpoint" if path.is_file() else "does not exist"
            raise PriorswapError(
                f"{ref} {what}: pass a registry id (`priorswap list`), a diffusers folder, or a checkpoint file "
                "(.safetensors, .ckpt, .pt, .bin, optionally with #variant)"
            )
        try:
            entry = registry.entry(ref)
        except RegistryError as e:
            raise RegistryError(f"{e}{plugins.hint()}") from None  # a failed plugin's ids are missing too
        ref_id, file = ref, registry.files[ref]
        missing = missing_plugin(ref, registry, plugins)
        if missing:
            raise PluginError(unknown_family(missing, entry.plugin, plugins))
    name, spec = registry.latent_space(entry)
    space = LatentSpace(
        name=name,
        channels=spec.channels,
        scale=spec.scale,
        shift=spec.shift,
        downsample=spec.downsample,
        family=spec.family,
    )
    return Resolved(ref_id, entry, space, file)


def unknown_family(what: str, plugin: str, plugins: Plugins) -> str:
    """The message for an entry whose `plugin` no installed plugin provides: `what` names the entry."""
    import difflib

    close = difflib.get_close_matches(plugin, plugins.families, n=3)
    return (f"{what}" + (f"; did you mean {', '.join(close)}?" if close else ".")
            + f" Installed model families: {', '.join(sorted(plugins.families)) or 'none'}. Install the plugin that "
            f"provides '{plugin}' into this environment, or correct the entry's `plugin`.{plugins.hint()}")


def missing_plugin(model_id: str, registry: Registry, plugins: Plugins) -> str | None:
    """Why the registry entry `model_id` cannot load here: its `plugin` names a family no installed plugin
    provides (None when one does). `priorswap doctor` reports these, `pairs` shows them as reasons."""
    plugin = registry.models[model_id].plugin
    if plugin in plugins.families:
        return None
    return (f"the registry entry '{model_id}' (in {registry.files[model_id]}) names `plugin: {plugin}`, a model "
            "family that no installed plugin provides")


def load(
    resolved: Resolved,
    role: str,
    plugins: Plugins,
    *,
    offline: bool | None = None,
    allow_pickle: bool = False,
    dtype: Any = None,
    device: str = "cpu",
) -> Loaded:
    """Fetches the folders `role` needs and builds the denoiser through the family's plugin."""
    entry = resolved.entry
    if role not in entry.roles:
        raise RegistryError(
            f"'{resolved.id}' cannot be used as a {role} (its registry entry lists roles: {', '.join(entry.roles)})"
        )
    if entry.plugin not in plugins.families:
        raise PluginError(unknown_family(f"{resolved.what()} names `plugin: {entry.plugin}`, a model family that "
                                         "no installed plugin provides", entry.plugin, plugins))
    family = plugins.family(entry.plugin)
    folders = entry.folders.get(role) or family.folders.get(role)
    try:
        if entry.source.file is not None:
            from .conversion import converted_folder

            folder = converted_folder(entry, family, offline=offline, allow_pickle=allow_pickle)
        else:
            folder = fetch(entry.source, folders, offline=offline, allow_pickle=allow_pickle)
    except PriorswapError as e:
        message = f"{e}{_on_demand_hint(e, entry, family, role, folders or [])}"
        if resolved.file is None and message == str(e):  # a local folder or checkpoint: the message names it
            raise
        raise _named(e, message if resolved.file is None else f"{resolved.what()}: {message}") from e
    request = LoadRequest(
        folder=folder,
        entry=entry,
        role=role,
        latent_space=resolved.latent_space,
        allow_pickle=allow_pickle,
        dtype=dtype,
        device=device,
        offline=offline,
    )
    try:
        denoiser = resolve_ref(family.load)(request)
    except Exception as e:
        problem = folder_problem(resolved, family, folder, folders or [], offline, plugins)
        if problem is not None:
            raise WeightsUnavailable(f"{problem} (loading it failed with {type(e).__name__}: {e})") from e
        if isinstance(e, PriorswapError) or not isinstance(e, OSError | ValueError | KeyError | EOFError
                                                             | pickle.UnpicklingError):
            raise
        # a broken or incomplete copy of the weights (JSON errors, truncated pickles too)
        remedy = ("download it again (or delete it from the cache) and retry" if entry.source.repo is not None
                  else "save or copy it again and retry")
        raise WeightsUnavailable(
            f"could not load {resolved.what()} ({entry.plugin}) from {folder}: {type(e).__name__}: {e}. The folder "
            f"is incomplete or a file is damaged: {remedy}"
        ) from e
    disagreements = entry_disagreements(entry, denoiser)
    if disagreements:
        warnings.warn(
            f"the registry entry of '{resolved.id}' disagrees with the scheduler config of its weights in {folder}: "
            f"{'; '.join(disagreements)}. Sampling follows the weights; `pairs` and the run record describe the "
            "entry: correct the entry", RegistryMismatchWarning, stacklevel=2,
        )
    return Loaded(resolved, folder, denoiser)


def _on_demand_hint(error: PriorswapError, entry: ModelEntry, family: Family, role: str, folders: list[str]) -> str:
    """For a hub folder repo not in the cache: the sentence naming the folders the role fetches later, only when
    needed (`Family.on_demand`), so that one download covers the first run; else ""."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    later = [f for f in family.on_demand.get(role, []) if f not in folders]
    cause = error.__cause__
    if not later or entry.source.repo is None or entry.source.file is not None \
            or not isinstance(cause, LocalEntryNotFoundError | FileNotFoundError):
        return ""
    includes = " ".join(f"--include '{f}/*'" for f in later)
    return (f" Until its null condition is cached (the first run), the {role} also needs "
            f"{', '.join(f + '/' for f in later)}: add {includes} to that download.")


def _named(error: PriorswapError, message: str) -> PriorswapError:
    """`error` again, of the same class where it takes a message alone, with `message` (naming the entry)."""
    try:
        return type(error)(message)
    except TypeError:
        return PriorswapError(message)


def folder_problem(
    resolved: Resolved, family: Family, folder: Path, expected: list[str], offline: bool | None, plugins: Plugins
) -> str | None:
    """Why `folder` failed to load as `family`, when its layout tells: a hub snapshot cached without the
    sub-folders the role needs (offline), or a folder that holds another family's model or none of the
    sub-folders the family expects (the entry's `plugin` may be wrong). None when the layout looks right."""
    source = resolved.entry.source
    missing = [f for f in expected if not (folder / f).is_dir()]
    if missing and source.repo is not None and source.file is None and is_offline(offline):
        return (f"the cached snapshot of {source.repo}@{source.revision} lacks {', '.join(f + '/' for f in missing)}, "
                f"which {resolved.what()} needs, and offline mode is on. On a machine with internet run: "
                f"{download_command(source, missing)} (then copy the cache, see HF_HOME), {retry_hint(True)}")
    index = folder / "model_index.json"
    try:
        class_name = read_json(index).get("_class_name") if index.is_file() else None
    except PriorswapError:
        class_name = None
    other = plugins.family_for_pipeline(class_name) if isinstance(class_name, str) else None
    foreign = other is not None and other.name != family.name and class_name not in family.pipeline_classes
    if not foreign and (not expected or len(missing) < len(expected)):
        return None
    found = sorted(p.name + "/" for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    claim = f"; its model_index.json names {class_name}, a {other.name} model" if foreign else ""
    return (f"{folder} does not look like a {family.name} model (a {family.name} folder has "
            f"{', '.join(f + '/' for f in expected)}; this one has {', '.join(found) or 'no sub-folders'}{claim}): "
            f"the `plugin: {resolved.entry.plugin}` of {resolved.what()} may be wrong")


def entry_disagreements(entry: ModelEntry, denoiser: Any) -> list[str]:
    """Where a registry entry's parameterization or schedule differs from the loaded denoiser's own."""
    found = []
    if denoiser.parameterization != entry.parameterization:
        found.append(f"parameterization: entry {entry.parameterization}, weights {denoiser.parameterization}")
    config = getattr(denoiser, "scheduler_config", None)
    if config:
        try:
            actual = ScheduleSpec(**schedule_fields(config)).key()
        except ValueError:  # a schedule the registry format cannot express: nothing to compare
            return found
        if actual != entry.schedule.key():
            found.append(f"schedule: entry {entry.schedule.key()}, weights {actual}")
    return found


def task_for(
    model: str, registry_files: list[str], plugins: Plugins, *, allow_pickle: bool = False
) -> tuple[str, type[Task]]:
    """The task name and class of a model (a registry id, local folder or checkpoint), without loading weights."""
    name, task, _ = task_and_entry(model, registry_files, plugins, allow_pickle=allow_pickle)
    return name, task


def task_and_entry(
    model: str, registry_files: list[str], plugins: Plugins, *, allow_pickle: bool = False
) -> tuple[str, type[Task], ModelEntry]:
    """`task_for` plus the model's resolved registry entry (for `Task.check_inputs`)."""
    registry = plugins.load_registry(registry_files)
    entry = resolve(model, registry, plugins, allow_pickle=allow_pickle).entry
    return (*task_of(entry, model, plugins), entry)


def task_of(entry: ModelEntry, model: str, plugins: Plugins) -> tuple[str, type[Task]]:
    """The task name and class of a resolved entry (its own `task`, else its family's default)."""
    if "model" not in entry.roles:
        raise PriorswapError(
            f"'{model}' is a prior only (its registry entry lists roles: {', '.join(entry.roles)}): it has no task "
            f"and cannot be sampled as a model. Use it as the prior of a fine-tuned model (--prior {model}; "
            "`priorswap pairs MODEL` lists the pairs)"
        )
    if entry.plugin not in plugins.families:
        raise PluginError(unknown_family(f"'{model}' names `plugin: {entry.plugin}`, a model family that no installed "
                                         "plugin provides", entry.plugin, plugins))
    family = plugins.family(entry.plugin)
    name = entry.task or family.default_task
    if name is None:
        raise PriorswapError(
            f"'{model}' names no `task`, and its model family '{entry.plugin}' has no default task (it serves as a "
            f"prior): set the entry's `task` (registered tasks: {', '.join(plugins.tasks) or 'none'}), or use it "
            "as a prior (--prior)"
        )
    if name not in plugins.tasks:
        raise PriorswapError(
            f"no task '{name}' is registered for '{model}' (registered tasks: {', '.join(plugins.tasks) or 'none'}); "
            f"the plugin that provides it may not be installed.{plugins.hint()}"
        )
    return name, plugins.task(name)


def compatible_priors(
    model_ref: str, registry: Registry, plugins: Plugins, match: str = "continuous", *, allow_pickle: bool = False
) -> list[Plan]:
    """Every prior in the registry with the adapters that would be inserted, or why it can't pair."""
    model = resolve(model_ref, registry, plugins, allow_pickle=allow_pickle).spec()
    plans = []
    for prior_id in registry.with_role("prior"):
        if prior_id == model_ref:
            continue
        missing = missing_plugin(prior_id, registry, plugins)
        if missing:  # listed, so that the entry is not silently left out
            plans.append(Plan(prior_id, reason=f"{missing}{plugins.hint()}"))
            continue
        prior = resolve(prior_id, registry, plugins).spec()
        plans.append(plan_pair(model, prior, plugins.bridges, match))
    return plans


def schedule_fields(config: dict) -> dict[str, Any]:
    """ScheduleSpec fields from a diffusers scheduler config."""
    if "FlowMatch" in config.get("_class_name", ""):
        return {"kind": "flow", "num_train_timesteps": config.get("num_train_timesteps", 1000)}
    return {
        "beta_schedule": config.get("beta_schedule", "linear"),
        "beta_start": config.get("beta_start", 0.0001),
        "beta_end": config.get("beta_end", 0.02),
        "num_train_timesteps": config.get("num_train_timesteps", 1000),
        "zero_terminal_snr": bool(config.get("rescale_betas_zero_snr", False)),
    }
