"""Plugin discovery with pluggy: entry-point group `priorswap`, failures reported, the rest works.

PRIORSWAP_PLUGINS restricts which entry points load (comma-separated names; empty = none); a name in it
that no installed entry point has is recorded as a failure (stage "PRIORSWAP_PLUGINS"), so a typo shows.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .family import Family, resolve_ref

GROUP = "priorswap"
ENV = "PRIORSWAP_PLUGINS"


@dataclass
class PluginFailure:
    plugin: str
    stage: str
    error: str
    details: str


@dataclass
class Plugins:
    """Loaded plugins and what each registered (every item remembers the plugin it came from)."""

    manager: pluggy.PluginManager = field(default_factory=lambda: pluggy.PluginManager(GROUP))
    items: list[tuple[str, str, str, Any]] = field(default_factory=list)  # (plugin, kind, key, value)
    failures: list[PluginFailure] = field(default_factory=list)
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)
    """plugin → (distribution name, version) for plugins loaded from entry points."""

    def __post_init__(self) -> None:
        self.manager.add_hookspecs(hookspecs)

    @classmethod
    def discover(cls) -> Plugins:
        """Loads every entry point of the group (or those PRIORSWAP_PLUGINS names) and runs its hooks."""
        plugins = cls()
        allowed = os.environ.get(ENV)
        names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
        found = entry_points(group=GROUP)
        for ep in found:
            if names is not None and ep.name not in names:
                continue
            try:
                module = ep.load()
            except Exception as e:  # a broken plugin must not take the others down
                plugins._fail(ep.name, "import", e)
                continue
            plugins.add(module, ep.name)
            if getattr(ep, "dist", None) is not None:
                plugins.distributions[ep.name] = (ep.dist.name, ep.dist.version)
        installed = sorted({ep.name for ep in found})
        for name in sorted((names or set()) - set(installed)):  # a typo would otherwise load nothing silently
            plugins.failures.append(PluginFailure(
                name, ENV, f"{ENV} names '{name}', but no installed plugin is called that (installed: "
                f"{', '.join(installed) or 'none'}); correct the name or unset {ENV}", "",
            ))
        return plugins

    def add(self, module: ModuleType | object, name: str) -> None:
        """Registers one plugin object and collects what its hooks register.

        A hook implementation whose name is not a priorswap hook (a typo) is a failure.
        """
        try:
            self.manager.register(module, name=name)
            self.manager.check_pending()
        except Exception as e:
            if self.manager.is_registered(module):
                self.manager.unregister(module)
            self._fail(name, "register", e)
            return
        for hook_name in (
            "register_denoisers", "register_tasks", "register_adapters", "register_registry_files",
            "register_golden_checks", "register_evaluators",
        ):
            kind = hook_name.removeprefix("register_")
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                if impl.plugin_name != name:
                    continue
                try:
                    impl.function(register=self._sink(name, kind))
                except Exception as e:
                    self._fail(name, hook_name, e)
        for impl in self.manager.hook.register_commands.get_hookimpls():
            if impl.plugin_name == name:
                self.items.append((name, "commands", "", impl.function))

    def _sink(self, plugin: str, kind: str) -> Any:
        """The `register` callback a hook gets. A wrong argument is recorded as this plugin's failure and
        skipped (the hook goes on), so one bad registration never breaks the other plugins."""

        def register(*args: Any) -> None:
            try:
                self.items.append((plugin, *_registration(kind, args)))
            except (TypeError, ValueError) as e:
                self._fail(plugin, f"register_{kind}", e)

        return register

    def add_commands(self, cli: Any) -> None:
        """Lets every plugin add its commands to the CLI once; a failing plugin is recorded, not fatal."""
        if getattr(cli, "_priorswap_commands_from", None) is self:
            return
        cli._priorswap_commands_from = self
        for plugin, kind, _, function in self.items:
            if kind != "commands":
                continue
            try:
                function(cli=cli)
            except Exception as e:
                self._fail(plugin, "register_commands", e)

    def remove(self, name: str) -> None:
        """Unregisters a plugin and everything it registered."""
        self.manager.unregister(name=name)
        self.items = [item for item in self.items if item[0] != name]
        self.failures = [f for f in self.failures if f.plugin != name]

    def _of(self, kind: str) -> list[tuple[str, str, Any]]:
        return [(plugin, key, value) for plugin, k, key, value in self.items if k == kind]

    @property
    def families(self) -> dict[str, Family]:
        return {key: value for _, key, value in self._of("family")}

    @property
    def tasks(self) -> dict[str, Any]:
        return {key: value for _, key, value in self._of("task")}

    @property
    def bridges(self) -> list[PluginBridge]:
        """The latent-space bridges plugins registered, each resolved on first use and named by its plugin."""
        return [PluginBridge(plugin, value) for plugin, _, value in self._of("bridge")]

    @property
    def golden_checks(self) -> dict[str, Any]:
        """family → checker for `priorswap check-golden`."""
        return {key: value for _, key, value in self._of("golden")}

    @property
    def evaluators(self) -> dict[str, Any]:
        """task → built-in evaluator for `priorswap eval` without --data."""
        return {key: value for _, key, value in self._of("evaluator")}

    @property
    def registry_files(self) -> list[Path]:
        return [value for _, _, value in self._of("registry")]

    def task(self, name: str) -> type:
        """The task class registered as `name`, its lazy reference resolved and checked."""
        from .task import Task

        plugin, value = next((p, v) for p, k, key, v in self.items if k == "task" and key == name)
        task = resolve_ref(value)
        if not (isinstance(task, type) and issubclass(task, Task)):
            raise PluginError(f"plugin {plugin} registers the task '{name}' as {value!r}, which is not a "
                              "priorswap.Task subclass; fix the plugin")
        inputs = getattr(task, "Inputs", None)
        clashes = sorted(set(inputs.model_fields) & sampling_option_names()) if inputs is not None else []
        if clashes:
            raise PluginError(
                f"plugin {plugin}'s task '{name}' has inputs named like sampling options "
                f"({', '.join(clashes)}): `priorswap sample` and Pair.sample would take them as those options, "
                "so the task could never receive them; rename those fields of the task's Inputs"
            )
        return task

    def provider(self, family: str) -> dict[str, str]:
        """Who provides a model family: {"family", "plugin", "package", "version"} (as far as known)."""
        plugin = next((p for p, k, key, _ in self.items if k == "family" and key == family), None)
        out = {"family": family}
        if plugin is not None:
            out["plugin"] = plugin
            if plugin in self.distributions:
                out["package"], out["version"] = self.distributions[plugin]
        return out

    def registered_by(self, plugin: str) -> list[str]:
        """One line per thing a plugin registered, for `priorswap doctor`."""
        return [f"{kind} {key}".strip() for p, kind, key, _ in self.items if p == plugin]

    def lazy_references(self) -> list[tuple[str, str, str]]:
        """(plugin, what, "module:attr") for every lazy string a plugin registered, for `priorswap doctor`."""
        refs = []
        for plugin, kind, key, value in self.items:
            if kind == "family":
                for attr in ("load", "describe", "convert", "describe_checkpoint"):
                    ref = getattr(value, attr)
                    if isinstance(ref, str):
                        refs.append((plugin, f"family {key}: {attr}", ref))
            elif kind in ("task", "golden", "evaluator", "bridge") and isinstance(value, str):
                refs.append((plugin, f"{kind} {key}".strip(), value))
        return refs

    def _fail(self, plugin: str, stage: str, error: BaseException) -> None:
        self.failures.append(
            PluginFailure(plugin, stage, f"{type(error).__name__}: {error}", traceback.format_exc())
        )

    def hint(self) -> str:
        """Why something may be missing: failed plugins and PRIORSWAP_PLUGINS."""
        parts = []
        broken = sorted({f.plugin for f in self.failures})
        if broken:
            parts.append(f"Plugins that failed to load: {', '.join(broken)} (see `priorswap doctor`).")
        if os.environ.get(ENV) is not None:
            parts.append(f"{ENV}={os.environ[ENV]!r} restricts which plugins load.")
        return (" " + " ".join(parts)) if parts else ""

    def load_registry(self, extra_files: list[str] | tuple[str, ...] = ()) -> Any:
        """The merged Registry with these plugins' registry files (errors carry `hint()`)."""
        from .registry import Registry

        names = {str(path): plugin for plugin, _, path in self._of("registry")}
        return Registry.load(extra_files, self.registry_files, hint=self.hint(), plugin_names=names)

    def family(self, name: str) -> Family:
        families = self.families
        if name not in families:
            import difflib

            close = difflib.get_close_matches(name, families, n=3)
            known = ", ".join(f"{key} (plugin {plugin})" for plugin, key, _ in sorted(self._of("family"),
                                                                                      key=lambda x: x[1]))
            raise PluginError(
                f"no installed plugin provides the model family '{name}'"
                + (f"; did you mean {', '.join(close)}?" if close else "")
                + f" Families: {known or 'none'}. A registry entry's `plugin` field names a family; install "
                f"the plugin that provides it into this environment.{self.hint()}"
            )
        return families[name]

    def family_for_pipeline(self, class_name: str) -> Family | None:
        return next((f for f in self.families.values() if class_name in f.pipeline_classes), None)

    def names(self) -> list[str]:
        return [name for name, _ in self.manager.list_name_plugin()]


@dataclass(frozen=True)
class PluginBridge:
    """A registered latent-space bridge: the plugin's factory (or "module:attr"), resolved when called."""

    plugin: str
    ref: Any

    @property
    def label(self) -> str:
        name = self.ref if isinstance(self.ref, str) else getattr(self.ref, "__qualname__", repr(self.ref))
        return f"bridge {name} of plugin {self.plugin}"

    def __call__(self, model_space: Any, prior_space: Any) -> Any:
        return resolve_ref(self.ref)(model_space, prior_space)


def _registration(kind: str, args: tuple) -> tuple[str, str, Any]:
    """(kind, key, value) for one register(...) call of a hook, or TypeError/ValueError saying what is wrong."""
    # a Task subclass exists only once priorswap.task (and torch) is imported: don't import it here
    task_module = sys.modules.get(__name__.rpartition(".")[0] + ".task")

    def is_task(value: Any) -> bool:
        return task_module is not None and isinstance(value, type) and issubclass(value, task_module.Task)

    def lazy_or(check: Callable[[Any], bool], value: Any, expected: str, hook: str) -> Any:
        if (isinstance(value, str) and ":" in value) or check(value):
            return value
        raise TypeError(f"{hook} takes {expected} or a lazy 'package.module:attr' string, got {value!r}")

    def arguments(n: int, usage: str) -> tuple:
        if len(args) != n:
            raise TypeError(f"register_{kind} takes register({usage}), got {len(args)} argument(s)")
        return args

    if kind == "denoisers":
        (family,) = arguments(1, "Family(...)")
        if not isinstance(family, Family):
            raise TypeError(f"register_denoisers takes priorswap.Family objects, got {family!r}")
        return "family", family.name, family
    if kind == "tasks":
        name, task = arguments(2, "name, TaskClass")
        return "task", str(name), lazy_or(is_task, task, "a priorswap.Task subclass", "register_tasks")
    if kind == "adapters":
        (factory,) = arguments(1, "factory")
        return "bridge", "", lazy_or(callable, factory, "a factory(model_space, prior_space)", "register_adapters")
    if kind == "golden_checks":
        family_name, checker = arguments(2, "family, checker")
        return "golden", str(family_name), lazy_or(callable, checker, "a checker(folder, fixture)",
                                                   "register_golden_checks")
    if kind == "evaluators":
        task_name, evaluator = arguments(2, "task_name, evaluator")
        return "evaluator", str(task_name), lazy_or(callable, evaluator, "an evaluator(request)",
                                                    "register_evaluators")
    (path,) = arguments(1, "path")
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"register_registry_files takes a path to a YAML file, got {path!r}")
    return "registry", "", Path(path)


_CACHE: Plugins | None = None


def sampling_option_names() -> set[str]:
    """Names a task input must not take: Pair.sample's keywords and `priorswap sample`'s options (as
    field names: `--out-dir` is out_dir)."""
    import inspect

    from .api import Pair
    from .cli import sample

    api = inspect.signature(Pair.sample).parameters
    cli = inspect.signature(sample).parameters
    return {n for n in api if n not in ("self", "inputs", "task_inputs")} | {n for n in cli if n != "ctx"}


def get_plugins(refresh: bool = False) -> Plugins:
    """The process-wide plugin set (discovered on first use)."""
    global _CACHE
    if _CACHE is None or refresh:
        _CACHE = Plugins.discover()
    return _CACHE
