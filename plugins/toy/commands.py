"""CLI commands of the toy plugin: `priorswap demo`, `priorswap toy train|results`. (`priorswap eval` is the
core's; the toy tasks give it their evaluator through the register_evaluators hook.)"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from priorswap.errors import PriorswapError


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PriorswapError(f"{option} takes comma-separated numbers, got '{text}'") from None


def register(cli: typer.Typer) -> None:
    """Adds the commands to the `priorswap` app (called from the plugin's register_commands hook)."""

    @cli.command()
    def demo(
        out: Annotated[Path, typer.Option(help="PNG file for the labelled grid.")] = Path("priorswap-demo.png"),
        samples: Annotated[int, typer.Option(
            min=2, help="Samples per method for the metrics table (≥ 2; the view model takes a whole number per "
                        "angle: 64 → 60).")] = 64,
        steps: Annotated[int, typer.Option(min=1, help="DDIM steps.")] = 15,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    ) -> None:
        """The main job: CFG vs prior swap on the shipped toy models (offline, about a minute)."""
        if out.suffix.lower() != ".png":
            raise PriorswapError(f"--out must be a .png file, got {out}")
        from priorswap import checks

        checks.writable_file(out, "--out")
        from rich.console import Console

        from .demo import run

        run(out, samples=samples, steps=steps, seed=seed, console=Console(stderr=False))

    toy = typer.Typer(help="The toy digits zoo: train it, regenerate its results page.", no_args_is_help=True)
    cli.add_typer(toy, name="toy")

    @toy.command()
    def train(
        only: Annotated[list[str] | None, typer.Option(help="Train only these ids (repeatable).")] = None,
        out: Annotated[Path | None, typer.Option(help="Output folder (default: the package's weights).")] = None,
        scale: Annotated[float, typer.Option(help="Multiply every step count (e.g. 0.01 for a smoke run).")] = 1.0,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        threads: Annotated[int | None, typer.Option(
            min=1, help="torch threads (the shipped weights: 1; default: torch's).")] = None,
    ) -> None:
        """Train the zoo (about an hour on 2 cores), seeded, with EMA weights."""
        from . import train as training

        unknown = [m for m in (only or []) if m not in training.ZOO]
        if unknown:
            raise PriorswapError(f"unknown zoo id(s) {', '.join(unknown)}; choose from {', '.join(training.ZOO)}")
        kwargs = {"only": only or None, "scale": scale, "seed": seed}
        if out is not None:
            kwargs["out_dir"] = out
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        stats = training.train_zoo(**kwargs)
        for model, s in stats.items():
            typer.echo(f"{model}: {s}")

    @toy.command()
    def results(
        out: Annotated[Path, typer.Option(help="Markdown page to write.")] = Path("docs/results-toy.md"),
        samples: Annotated[int, typer.Option(help="Samples per method, scale and seed.")] = 200,
        seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "0,1,2",
        steps: Annotated[int, typer.Option(help="DDIM steps.")] = 25,
        render_only: Annotated[
            bool, typer.Option(
                "--render-only", help="Re-render the page from the saved results-toy/results.json, measure nothing.")
        ] = False,
    ) -> None:
        """Regenerate docs/results-toy.md: every task × {CFG, swap base, swap DiT-v, swap DiT-v without
        adapters} × γ ∈ {1.25, 1.5, 2, 3}, plus each model's unconditional FD."""
        from priorswap import checks

        from .results import render_page, write_page

        if not out.parent.is_dir():  # the page links its figures in results-toy/ beside it: a folder of pages
            raise PriorswapError(f"--out {out}: no folder {out.parent}; run from the repository root (the default "
                                 "is docs/results-toy.md) or give --out in an existing folder")
        checks.writable_file(out, "--out")
        if render_only:
            if not (out.parent / "results-toy" / "results.json").is_file():
                raise PriorswapError(f"no {out.parent / 'results-toy' / 'results.json'} to render: run without "
                                     "--render-only first")
            render_page(out)
            return
        write_page(out, samples=samples, seeds=tuple(int(s) for s in _floats(seeds, "--seeds")), steps=steps)
