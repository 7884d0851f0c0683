"""Plugin discovery with pluggy: entry-point group `priorswap`, failures reported, the rest works.

PRIORSWAP_PLUGINS restricts which entry points load (comma-separated names; empty = none).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .family import Family

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
    """Loaded plugins and what they registered."""

    manager: pluggy.PluginManager = field(default_factory=lambda: pluggy.PluginManager(GROUP))
    families: dict[str, Family] = field(default_factory=dict)
    tasks: dict[str, Any] = field(default_factory=dict)
    bridges: list[Any] = field(default_factory=list)
    registry_files: list[Path] = field(default_factory=list)
    command_hooks: list[tuple[str, Any]] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.manager.add_hookspecs(hookspecs)

    @classmethod
    def discover(cls) -> Plugins:
        """Loads every entry point of the group (or those PRIORSWAP_PLUGINS names) and runs its hooks."""
        plugins = cls()
        allowed = os.environ.get(ENV)
        names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
        for ep in entry_points(group=GROUP):
            if names is not None and ep.name not in names:
                continue
            try:
                module = ep.load()
            except Exception as e:  # a broken plugin must not take the others down
                plugins._fail(ep.name, "import", e)
                continue
            plugins.add(module, ep.name)
        return plugins

    def add(self, module: ModuleType | object, name: str) -> None:
        """Registers one plugin object and collects what its hooks register."""
        try:
            self.manager.register(module, name=name)
        except Exception as e:
            self._fail(name, "register", e)
            return
        hooks = {
            "register_denoisers": self._add_family,
            "register_tasks": self._add_task,
            "register_adapters": self.bridges.append,
            "register_registry_files": lambda p: self.registry_files.append(Path(p)),
        }
        for hook_name, sink in hooks.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                if impl.plugin_name != name:
                    continue
                try:
                    impl.function(register=self._tagged(sink, name))
                except Exception as e:
                    self._fail(name, hook_name, e)
        self.command_hooks += [
            (name, impl.function) for impl in self.manager.hook.register_commands.get_hookimpls()
            if impl.plugin_name == name
        ]

    def add_commands(self, cli: Any) -> None:
        """Lets every plugin add its commands to the CLI once; a failing plugin is recorded, not fatal."""
        if getattr(cli, "_priorswap_commands_from", None) is self:
            return
        cli._priorswap_commands_from = self
        for name, function in self.command_hooks:
            try:
                function(cli=cli)
            except Exception as e:
                self._fail(name, "register_commands", e)

    def remove(self, name: str) -> None:
        self.manager.unregister(name=name)
        self.families = {k: f for k, f in self.families.items() if self.origin.get(f"family:{k}") != name}
        self.tasks = {k: t for k, t in self.tasks.items() if self.origin.get(f"task:{k}") != name}

    def _tagged(self, sink: Any, plugin: str) -> Any:
        def register(*args: Any, **kwargs: Any) -> None:
            self._current = plugin
            sink(*args, **kwargs)

        return register

    def _add_family(self, family: Family) -> None:
        if not isinstance(family, Family):
            raise TypeError(f"register_denoisers must register priorswap.Family objects, got {type(family)!r}")
        self.families[family.name] = family
        self.origin[f"family:{family.name}"] = self._current

    def _add_task(self, name: str, task: Any) -> None:
        self.tasks[name] = task
        self.origin[f"task:{name}"] = self._current

    def _fail(self, plugin: str, stage: str, error: BaseException) -> None:
        self.failures.append(
            PluginFailure(plugin, stage, f"{type(error).__name__}: {error}", traceback.format_exc())
        )

    def family(self, name: str) -> Family:
        if name not in self.families:
            known = ", ".join(sorted(self.families)) or "none"
            broken = [f.plugin for f in self.failures]
            hint = f" Plugins that failed to load: {', '.join(broken)} (see `priorswap doctor`)." if broken else ""
            raise PluginError(
                f"no installed plugin provides the model family '{name}' (installed: {known}).{hint}"
            )
        return self.families[name]

    def family_for_pipeline(self, class_name: str) -> Family | None:
        return next((f for f in self.families.values() if class_name in f.pipeline_classes), None)

    def names(self) -> list[str]:
        return [name for name, _ in self.manager.list_name_plugin()]


_CACHE: Plugins | None = None


def get_plugins(refresh: bool = False) -> Plugins:
    """The process-wide plugin set (discovered on first use)."""
    global _CACHE
    if _CACHE is None or refresh:
        _CACHE = Plugins.discover()
    return _CACHE
