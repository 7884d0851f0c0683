"""`priorswap demo`: the method on the shipped toy zoo, offline, in about a minute on 2 CPU cores.

Samples the class and view models with plain CFG and with the prior swap (base UNet prior, and
the cross-architecture DiT-v prior) from the same seeds, writes one labelled PNG grid and prints
a small metrics table.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

import priorswap

from . import data
from .evaluate import Reference, Variant, evaluate, samples_used

CLASS_MODEL, VIEW_MODEL = "toy-digits-class", "toy-digits-view"
TASKS = {CLASS_MODEL: "toy-class", VIEW_MODEL: "toy-view"}
VARIANTS = (Variant(None), Variant("toy-digits-base"), Variant("toy-digits-dit-v"))
ROW_NAMES = ("CFG", "swap: base UNet", "swap: DiT-v")
CELL, PAD, LABEL_W, HEAD_H = 40, 4, 118, 34
FONT = ImageFont.load_default(size=12)


def _cells(images: torch.Tensor) -> list[Image.Image]:
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
    return [Image.fromarray(p, mode="L").resize((CELL, CELL), Image.NEAREST) for p in pixels]


def _block(title: str, headers: list[str], rows: list[list[Image.Image]], source: Image.Image | None) -> Image.Image:
    cols = len(headers)
    width = LABEL_W + cols * (CELL + PAD) + PAD
    height = HEAD_H + len(rows) * (CELL + PAD) + PAD + (CELL + 16 if source is not None else 0)
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 2), title, fill=0, font=FONT)
    for j, head in enumerate(headers):
        draw.text((LABEL_W + j * (CELL + PAD) + 4, 18), head, fill=0, font=FONT)
    for i, (name, cells) in enumerate(zip(ROW_NAMES, rows, strict=True)):
        top = HEAD_H + i * (CELL + PAD)
        draw.text((PAD, top + CELL // 2 - 6), name, fill=0, font=FONT)
        for j, cell in enumerate(cells):
            canvas.paste(cell, (LABEL_W + j * (CELL + PAD), top))
    if source is not None:
        top = HEAD_H + len(rows) * (CELL + PAD) + 12
        draw.text((PAD, top + CELL // 2 - 6), "source (input)", fill=0, font=FONT)
        canvas.paste(source, (LABEL_W, top))
    return canvas


def _stack(blocks: list[Image.Image]) -> Image.Image:
    width = sum(b.width for b in blocks) + PAD * (len(blocks) - 1)
    out = Image.new("L", (width, max(b.height for b in blocks)), 255)
    x = 0
    for b in blocks:
        out.paste(b, (x, 0))
        x += b.width + PAD
    return out


GRID_RUNS = len(VARIANTS) * (1 + len(data.VIEW_ANGLES_EVAL))
"""Sampling runs of `grid`: per variant one class batch, then one run per view angle."""


def grid(seed: int = 0, steps: int = 15, source_index: int = 13,
         advance: Callable[[], None] | None = None) -> Image.Image:
    """The demo picture: rows CFG / swap-base / swap-DiT-v; columns the ten classes, then the view angles.

    `advance` is called after each of the GRID_RUNS sampling runs (a progress bar)."""
    advance = advance or (lambda: None)
    class_rows, view_rows = [], []
    angles = [float(a) for a in data.VIEW_ANGLES_EVAL]
    for variant in VARIANTS:
        pair = priorswap.load_pair(CLASS_MODEL, prior=variant.prior)
        rule = pair.guidance_for("cfg" if variant.prior is None else "prior-swap", None)
        out = pair.sample(class_label=list(range(10)), guidance=rule, steps=steps, seed=seed, decode=False)
        class_rows.append(_cells(out.latents))
        advance()
        view = priorswap.load_pair(VIEW_MODEL, prior=variant.prior)
        rule = view.guidance_for("cfg" if variant.prior is None else "prior-swap", None)
        cells = []
        for angle in angles:
            out = view.sample(source_index=[source_index], angle=angle, guidance=rule, steps=steps, seed=seed,
                              decode=False)
            cells += _cells(out.latents)
            advance()
        view_rows.append(cells)
    class_gamma = pair.model.resolved.entry.recommended.guidance
    view_gamma = view.model.resolved.entry.recommended.guidance
    source = _cells(data.load_digits16("test")[0][source_index : source_index + 1])[0]
    class_block = _block(f"{CLASS_MODEL}: class label, guidance {class_gamma:g}", [str(c) for c in range(10)],
                         class_rows, None)
    view_block = _block(f"{VIEW_MODEL}: rotate by, guidance {view_gamma:g}", [f"{a:+.0f}°" for a in angles],
                        view_rows, source)
    return _stack([class_block, view_block])


def metrics_table(records: list, model: str, samples: int):
    """One compact rich table per model: a row per metric, a column per method (value and 95 % CI); `samples`
    per method, as measured. A cell wraps (value, then its interval) rather than being cut on a narrow terminal."""
    from rich import box
    from rich.table import Table

    mine = [r for r in records if r.model == model and not r.metric.startswith("fd_class")]
    labels = {v.label: name for v, name in zip(VARIANTS, ROW_NAMES, strict=True)}
    methods = list(dict.fromkeys(r.method for r in mine))
    table = Table(title=f"{model}, γ={mine[0].guidance:g}, {samples} samples per method (95 % bootstrap CI)",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("metric", no_wrap=True)
    for method in methods:
        table.add_column(labels.get(method, method))
    for metric in dict.fromkeys(r.metric for r in mine):
        cells = {r.method: r for r in mine if r.metric == metric}
        table.add_row(metric, *(
            f"{cells[m].value:.3g} [{cells[m].ci_low:.3g}, {cells[m].ci_high:.3g}]" for m in methods
        ))
    return table


def run(out: Path, samples: int = 64, steps: int = 15, seed: int = 0, console=None) -> list:
    """Writes the grid to `out` and returns the metric records (also printed as a table), with a progress bar
    on `console` while it samples."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from priorswap.media import write_atomic

    if samples < 2:
        raise priorswap.PriorswapError(f"samples must be at least 2 (a Fréchet distance needs two), got {samples}")
    if steps < 1:
        raise priorswap.PriorswapError(f"steps must be at least 1, got {steps}")
    console = console or Console()
    used = {model: samples_used(task, samples) for model, task in TASKS.items()}
    start = time.perf_counter()
    records = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("sampling the demo grid", total=GRID_RUNS)
        picture = grid(seed=seed, steps=steps, advance=lambda: progress.advance(bar))
        write_atomic(Path(out), lambda tmp: picture.save(tmp, format="PNG"))
        progress.console.print(f"grid → {out}  ({time.perf_counter() - start:.0f} s)")
        reference = Reference()
        for model in (CLASS_MODEL, VIEW_MODEL):
            rec = priorswap.Registry.load(plugin_files=priorswap.get_plugins().registry_files).entry(model).recommended
            bar = progress.add_task(f"measuring {model} ({used[model]} samples per method)", total=len(VARIANTS))
            done = itertools.count()  # evaluate reports each method as it starts it: the ones before it are done
            records += evaluate(model, list(VARIANTS), [rec.guidance], samples=samples, seeds=(seed,), steps=steps,
                                n_boot=200, reference=reference,
                                progress=lambda _, bar=bar, done=done: progress.update(bar, completed=next(done)))
            progress.update(bar, completed=len(VARIANTS))
    for model in (CLASS_MODEL, VIEW_MODEL):
        console.print(metrics_table(records, model, used[model]))
    console.print(
        f"done in {time.perf_counter() - start:.0f} s. FD: lower is better; accuracy, PSNR, SSIM: higher is better. "
        "Full results with several seeds: docs/results-toy.md"
    )
    return records
