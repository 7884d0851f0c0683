"""`priorswap doctor`: environment, plugins (with failures), registry validity and caches."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import PluginRegistryWarning, PriorswapError

PACKAGES = ("torch", "diffusers", "transformers", "huggingface_hub", "safetensors", "pluggy", "pydantic")


def _check_entries(console: Console, reg: Any, plugins: Any) -> bool:
    """Every entry's model family is installed and its package source resolves (False, printed, when not);
    a local source path that does not exist is a warning only (the folder may be mounted later), and so are
    families left out on purpose by PRIORSWAP_PLUGINS."""
    from .hub import package_folder
    from .loading import missing_plugin
    from .plugin_manager import ENV

    ok, restricted = True, os.environ.get(ENV) is not None
    left_out = sorted(k for k in reg.models if missing_plugin(k, reg, plugins))
    if left_out and restricted:
        families = sorted({reg.models[k].plugin for k in left_out})
        console.print(f"[yellow]Registry: {ENV} leaves out the model families {', '.join(families)}, so these "
                      f"entries cannot load: {', '.join(left_out)}[/]", soft_wrap=True)
    for model_id, entry in reg.models.items():
        if model_id in left_out and not restricted:
            console.print(f"[red]Registry: {missing_plugin(model_id, reg, plugins)}[/] (installed: "
                          f"{', '.join(sorted(plugins.families)) or 'none'}; install its plugin or correct the "
                          "entry)", soft_wrap=True)
            ok = False
        source, where = entry.source, f"the registry entry '{model_id}' (in {reg.files[model_id]})"
        if source.package is not None:
            try:
                folder = package_folder(source)
            except PriorswapError as e:
                console.print(f"[red]Registry: {where}: {e}[/]", soft_wrap=True)
                ok = False
                continue
            if not folder.is_dir():
                console.print(f"[red]Registry: {where}: its source {source.describe()} is not a folder of the "
                              f"installed package ({folder} does not exist)[/]", soft_wrap=True)
                ok = False
        elif source.path is not None and not Path(source.path).expanduser().exists():
            console.print(f"[yellow]Registry: {where}: its source.path {source.path} does not exist[/]",
                          soft_wrap=True)
    replaced = [f"{key} ({reg.origin(key)} replaces {', '.join(reg.overrides(key))})" for key in reg.models
                if reg.overrides(key)]
    replaced += [f"latent space {name} ({reg.space_origin(name)} replaces {', '.join(reg.space_overrides(name))})"
                 for name in reg.latent_spaces if reg.space_overrides(name)]
    if replaced:
        console.print(f"Registry: overridden by a later file: {'; '.join(replaced)}", soft_wrap=True)
    return ok


def report(console: Console, registry_files: list[str]) -> bool:
    """Prints the report; returns False when something is broken."""
    from .family import resolve_ref
    from .plugin_manager import ENV, get_plugins

    ok = True
    env = Table(title="Environment", title_justify="left")
    env.add_column("item")
    env.add_column("value")
    env.add_row("python", platform.python_version())
    for name in PACKAGES:
        try:
            env.add_row(name, md.version(name))
        except md.PackageNotFoundError:
            env.add_row(name, "[red]missing[/]")
            ok = False
    env.add_row("HF_HOME", os.environ.get("HF_HOME", "~/.cache/huggingface (default)"))
    env.add_row("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "unset"))
    env.add_row("PRIORSWAP_PLUGINS", os.environ.get("PRIORSWAP_PLUGINS", "unset (all plugins load)"))
    console.print(env)

    plugins = get_plugins()
    refs = plugins.lazy_references()
    broken: dict[str, list[str]] = {}  # plugin → its registrations whose reference does not resolve
    from .task import Task

    for plugin, what, ref in refs:
        try:
            value = resolve_ref(ref)
            if what.startswith("task ") and not (isinstance(value, type) and issubclass(value, Task)):
                raise PriorswapError(f"{ref!r} is not a priorswap.Task subclass")
            if not what.startswith("task ") and not callable(value):
                raise PriorswapError(f"{ref!r} is not callable")
        except PriorswapError as e:
            broken.setdefault(plugin, []).append(f"[red]plugin {plugin}, {what}:[/] {e}")

    table = Table(title="Plugins", title_justify="left")
    table.add_column("plugin")
    table.add_column("status")
    table.add_column("registers")
    for name in plugins.names():
        what = plugins.registered_by(name)
        failed = [f for f in plugins.failures if f.plugin == name]
        if failed:
            status = "[red]failed[/]"
        elif name in broken:
            status = f"[red]{len(broken[name])} broken reference{'s' if len(broken[name]) > 1 else ''}[/]"
        else:
            status = "[green]ok[/]"
        table.add_row(name, status, ", ".join(what))
    for failure in plugins.failures:
        if failure.stage == "import":
            table.add_row(failure.plugin, "[red]failed to import[/]", "nothing")
        elif failure.stage == ENV:
            table.add_row(failure.plugin, f"[red]not installed (named in {ENV})[/]", "nothing")
    console.print(table)
    for failure in plugins.failures:
        if failure.stage == ENV:
            console.print(f"[red]{failure.error}[/]", soft_wrap=True)
        else:
            stage = "import" if failure.stage == "import" else f"hook {failure.stage}"
            console.print(f"[red]plugin {failure.plugin} failed in {stage}:[/] {failure.error}", soft_wrap=True)
        ok = False
    for lines in broken.values():
        for line in lines:
            console.print(line, soft_wrap=True)
    if broken:
        ok = False
    else:
        console.print(f"Plugin references: [green]all {len(refs)} resolve[/]")

    try:
        with warnings.catch_warnings():  # the skipped plugin files are reported below, once
            warnings.simplefilter("ignore", PluginRegistryWarning)
            reg = plugins.load_registry(registry_files)
        owner = {str(path): plugin for plugin, kind, _, path in plugins.items if kind == "registry"}
        for origin, why in reg.skipped:
            console.print(f"[red]plugin {owner.get(origin, '?')}, registry file skipped in part or whole:[/] "
                          f"{why}", soft_wrap=True)
            ok = False
        console.print(f"Registry: [green]{len(reg.models)} models, {len(reg.latent_spaces)} latent spaces[/]",
                      soft_wrap=True)
        ok = _check_entries(console, reg, plugins) and ok
    except PriorswapError as e:
        console.print(f"[red]Registry: {e}[/]")
        ok = False

    from .nullcache import cache_dir, checked_home

    try:
        checked_home()
        console.print(f"Null-condition cache: {cache_dir()}")
    except PriorswapError as e:
        console.print(f"[red]Cache: {e}[/]", soft_wrap=True)
        ok = False
    from .errors import MetricUnavailable
    from .fid_inception import INCEPTION
    from .lpips_alexnet import ALEXNET, heads_file
    from .metric_weights import weights_state

    try:
        heads = (heads_file(),)
    except MetricUnavailable:
        heads = ()
    for metric, spec, packaged in (("LPIPS", ALEXNET, heads), ("FID", INCEPTION, ())):
        ready, line = weights_state(spec, packaged)
        console.print(f"{metric} weights (eval): [{'green' if ready else 'yellow'}]{line}[/]", soft_wrap=True)
    console.print("[green]all good[/]" if ok else "[red]problems found (see above)[/]")
    return ok
