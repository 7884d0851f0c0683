"""The plugin hooks. Each takes a `register` callback that the plugin calls as often as it likes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("priorswap")
hookimpl = pluggy.HookimplMarker("priorswap")


@hookspec
def register_denoisers(register: Callable[[Any], None]) -> None:
    """Register model families: register(Family(...)) — how to load a denoiser and recognise a folder."""


@hookspec
def register_tasks(register: Callable[..., None]) -> None:
    """Register tasks: register(name, TaskClass or "module:Class")."""


@hookspec
def register_adapters(register: Callable[[Any], None]) -> None:
    """Register latent-space bridges: register(factory), factory(model_space, prior_space) → Adapter | None."""


@hookspec
def register_registry_files(register: Callable[[Any], None]) -> None:
    """Register registry YAML files that ship with the plugin: register(path)."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the `priorswap` CLI: `cli` is the typer app (use @cli.command() or cli.add_typer)."""


@hookspec
def register_golden_checks(register: Callable[..., None]) -> None:
    """Opt a family into `priorswap check-golden`: register(family, checker). `checker(folder, fixture)`
    (a callable or "module:attr") runs the fixture's call through the plugin and returns the produced
    tensors by the names in fixture.json's `compare` (or a `priorswap.golden.Produced`)."""


@hookspec
def register_evaluators(register: Callable[..., None]) -> None:
    """Give tasks a built-in `priorswap eval` (run without --data): register(task_name, evaluator), where
    `evaluator(request)` (a callable or "module:attr") takes a `priorswap.dataset_eval.EvalRequest`."""
