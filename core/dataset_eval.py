"""`priorswap eval --data DIR`: sample every item of a dataset folder with each variant (plain CFG or a
prior swap) × guidance scale × seed, measure the task's metrics, and report them with bootstrap CIs.

Writes results.json (one record per variant × scale with every per-sample value), results.md (a
table) and samples.png (input | target | one column per variant and scale, for the first items, labelled,
with a provenance record).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import checks
from . import image_metrics as M
from .datasets import Item, load_items
from .errors import PriorswapError
from .images import WHITE
from .loading import task_and_entry
from .plugin_manager import Plugins, get_plugins

INPUT_FIELD = "image"  # the task input that holds the source image (clip-image, clip-direction, the grid)
TEXT_FIELD = "prompt"  # the task input clip-text falls back to without caption_out
GRID_ITEMS = 4
GRID_MIN_CELL = 64  # px: smaller outputs (the toy's 16×16) are scaled up (nearest) in samples.png, under labels
N_BOOT = 500
N_BOOT_SET = 200  # Fréchet distances cost an eigendecomposition per resample
OUTPUTS = ("results.json", "results.md", "samples.png")


@dataclass
class EvalRequest:
    """What `priorswap eval` was asked. None means "the evaluator's default"; a built-in evaluator (the
    `register_evaluators` hook) should refuse options that do not apply to it rather than ignore them."""

    model: str
    priors: list[str | None] = field(default_factory=lambda: [None])  # None = plain CFG / dual CFG
    guidance: list[float] | None = None
    image_guidance: float | None = None
    samples: int | None = None
    seeds: list[int] | None = None
    steps: int | None = None
    out: Path | None = None
    ablate_adapters: bool = False
    registry: list[str] = field(default_factory=list)
    offline: bool = False
    allow_pickle: bool = False
    device: str | None = None
    dtype: Any = None  # a torch dtype, None = float32
    data: Path | None = None
    limit: int | None = None
    clip: str | None = None
    samples_per_item: int = 1
    metrics: list[str] | None = None  # a subset of the task's metrics; None = all
    command: str | None = None  # the command line, for the provenance record of samples.png


@dataclass(frozen=True)
class Variant:
    """A way of sampling: plain CFG (prior None) or a swap with `prior`, with or without adapters."""

    prior: str | None
    adapters: bool = True

    @property
    def label(self) -> str:
        if self.prior is None:
            return "cfg"
        return f"swap:{self.prior}" + ("" if self.adapters else " (no adapters)")

    def method(self, dual: bool) -> str:
        return ("dual-" if dual else "") + ("cfg" if self.prior is None else "prior-swap")


def variants(request: EvalRequest) -> list[Variant]:
    """One variant per prior (None = CFG), plus each prior without adapters when ablating."""
    out = [Variant(p) for p in request.priors]
    if request.ablate_adapters:
        out += [Variant(p, adapters=False) for p in request.priors if p is not None]
    return list(dict.fromkeys(out))


# ---- measuring ------------------------------------------------------------------------------------------


def _to_unit(image: torch.Tensor) -> torch.Tensor:
    return ((image.float() + 1) / 2).clamp(0, 1)


def _path(item: Item) -> Path | None:
    """The item's one input image (the metrics' reference), or None (no such field, or a list of images)."""
    value = item.value(INPUT_FIELD)
    return Path(value) if isinstance(value, (str, Path)) else None


def _shown_path(item: Item) -> Path | None:
    """The input image samples.png shows: the one input image, or the first of a list (the toy tasks' sources),
    the source of the first output, which is the one the grid shows."""
    value = item.value(INPUT_FIELD)
    if isinstance(value, (list, tuple)):
        value = next(iter(value), None)
    return Path(value) if isinstance(value, (str, Path)) else None


def _texts(item: Item, rows: int) -> list[str] | None:
    """The text each output row should show: caption_out, else the row's prompt."""
    if item.caption_out:
        return [item.caption_out] * rows
    prompt = item.value(TEXT_FIELD)
    if not prompt:
        return None
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    per = rows // len(prompts) if rows % len(prompts) == 0 else 0
    return [prompts[r // per] for r in range(rows)] if per else [prompts[0]] * rows


@dataclass
class Tally:
    """What one variant × scale produced: per-sample values and, for set metrics, features by item."""

    values: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    features: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=lambda: defaultdict(dict))


class Measurer:
    """Computes a task's metrics on decoded outputs, item by item. Metrics the data or the machine cannot
    support are listed in `skipped` with the reason; what depends only on an item is computed once."""

    def __init__(self, names: tuple[str, ...], items: list[Item], clip: str | None, device: str,
                 offline: bool, allow_pickle: bool, background: int = WHITE) -> None:
        self.items = items
        self.background = background  # where images are transparent (the task's `image_background`)
        self.skipped: dict[str, str] = {}
        names = list(dict.fromkeys(names))
        if "clip-image" in names and any(i.target for i in items):
            names.insert(names.index("clip-image") + 1, "clip-image-target")
        self.reference = self._reference_kind(items)
        for name in names:
            reason = self._data_gap(name, items)
            if reason:
                self.skipped[name] = reason
        active = [n for n in names if n not in self.skipped]
        self.lpips = self.inception = self.clip = None
        self._load(active, clip or M.DEFAULT_CLIP, device, offline, allow_pickle)
        self.active = [n for n in active if n not in self.skipped]
        self.declared = names
        self.unmeasured = {n: ids for n in self.active if (ids := [i.id for i in items if not _covers(n, i)])}
        self._cache: dict[Any, Any] = {}

    @staticmethod
    def _reference_kind(items: list[Item]) -> str | None:
        if all(i.target for i in items):
            return "target"
        if all(_path(i) for i in items):
            return "input"
        return None

    def _data_gap(self, name: str, items: list[Item]) -> str | None:
        needs = M.METRICS[name].needs
        if needs == "target" and not any(i.target for i in items):
            return "needs a `target` image in the items"
        if needs == "image" and not any(_path(i) for i in items):
            return f"needs the task input `{INPUT_FIELD}`"
        if needs == "text" and not any(i.caption_out or i.value(TEXT_FIELD) for i in items):
            return f"needs `caption_out` or a `{TEXT_FIELD}` in the items"
        if needs == "captions" and not any(i.caption_in and i.caption_out and _path(i) for i in items):
            return "needs `caption_in` and `caption_out` in the items"
        if needs == "reference set":
            if self.reference is None:
                return f"needs a `target` on every item, or the task input `{INPUT_FIELD}` on every item"
            if len(items) < 2:
                return "a Fréchet distance needs at least 2 items"
        return None

    def _load(self, active: list[str], clip: str, device: str, offline: bool, allow_pickle: bool) -> None:
        if "lpips" in active:
            try:
                self.lpips = M.Lpips(device, offline, allow_pickle)
            except M.MetricUnavailable as e:
                self.skipped["lpips"] = e.reason
        if "fid" in active:
            try:
                self.inception = M.InceptionFeatures(device, offline, allow_pickle)
            except M.MetricUnavailable as e:
                self.skipped["fid"] = e.reason
        needs_clip = [n for n in active if n in M.CLIP_METRICS]
        if needs_clip:
            try:
                self.clip = M.Clip.load(clip, device, offline, allow_pickle)
            except M.MetricUnavailable as e:
                for n in needs_clip:
                    self.skipped[n] = e.reason

    # -- per-item references: images are read when needed, embeddings computed once -------------------------
    def _once(self, key: Any, make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def input_pil(self, item: Item) -> Any:
        from .images import open_image

        return open_image(_path(item), background=self.background)

    def target(self, item: Item, size: tuple[int, int]) -> torch.Tensor:
        """The target image in [0, 1], (1, 3, H, W), resized (bicubic) to the output size."""
        from .images import load_image

        return _to_unit(load_image(item.target, size, background=self.background))

    def clip_image(self, key: tuple, make_pil: Any) -> torch.Tensor:
        return self._once(("clip",) + key, lambda: self.clip.images([make_pil()]))

    def clip_text(self, text: str) -> torch.Tensor:
        return self._once(("text", text), lambda: self.clip.texts([text]))

    # -- measuring -------------------------------------------------------------------------------------------
    def measure(self, item: Item, images: torch.Tensor, seed: int, tally: Tally) -> None:
        """Adds the metrics of one item's outputs (B, 3, H, W) in [0, 1] to `tally`."""
        rows, size = images.shape[0], tuple(images.shape[-2:])
        values: dict[str, np.ndarray] = {}
        if item.target is not None:
            target = self.target(item, size).expand_as(images)
            for name, fn in (("psnr", M.psnr), ("ssim", M.ssim), ("lpips", self.lpips)):
                if name in self.active:
                    values[name] = fn(images, target)
        embeds = self.clip.images(images) if self.clip is not None else None
        source = _path(item)
        if embeds is not None:
            if "clip-image" in self.active and source:
                values["clip-image"] = M.cosine(embeds, self.clip_image(("in", item.id), lambda: self.input_pil(item)))
            if "clip-image-target" in self.active and item.target:
                from .images import open_image

                ref = self.clip_image(("target", item.id),
                                      lambda: open_image(item.target, background=self.background))
                values["clip-image-target"] = M.cosine(embeds, ref)
            texts = _texts(item, rows)
            if "clip-text" in self.active and texts:
                values["clip-text"] = M.cosine(embeds, torch.cat([self.clip_text(t) for t in texts]))
            if "clip-direction" in self.active and item.caption_in and item.caption_out and source:
                in_image = self.clip_image(("in", item.id), lambda: self.input_pil(item))
                values["clip-direction"] = M.clip_direction(
                    embeds, in_image, self.clip_text(item.caption_out), self.clip_text(item.caption_in)
                )
            if "fd-clip" in self.active:
                tally.features["fd-clip"].setdefault(item.id, []).append(embeds.double().numpy())
        if "fid" in self.active:
            tally.features["fid"].setdefault(item.id, []).append(self.inception(images))
        for name, vals in values.items():
            tally.values[name] += [
                {"item": item.id, "seed": seed, "sample": k, "value": _finite(float(v))} for k, v in enumerate(vals)
            ]

    def reference_features(self, name: str) -> np.ndarray:
        """Features of the reference set (the targets, or the input images) for a Fréchet distance."""
        from .images import open_image

        def make() -> np.ndarray:
            feats = []
            for item in self.items:
                path = item.target if self.reference == "target" else _path(item)
                if name == "fd-clip":
                    feats.append(self.clip.images([open_image(path, background=self.background)]).double().numpy())
                else:
                    feats.append(self.inception(_to_unit(_load_native(path, self.background))))
            return np.concatenate(feats)

        return self._once(("reference", name), make)


def _load_native(path: Path, background: int) -> torch.Tensor:
    from .images import load_image

    return load_image(path, background=background)


NEEDS_TEXT = {"target": "a `target`", "image": f"an input `{INPUT_FIELD}`",
              "text": f"a `caption_out` or `{TEXT_FIELD}`", "captions": "both `caption_in` and `caption_out`"}
"""What an item must have for a per-sample metric (by `MetricInfo.needs`), for the messages."""


def _covers(name: str, item: Item) -> bool:
    """Whether the per-sample metric `name` can be measured on `item` (set metrics take every item)."""
    needs = M.METRICS[name].needs
    if needs == "target":
        return item.target is not None
    if needs == "image":
        return _path(item) is not None
    if needs == "text":
        return bool(item.caption_out or item.value(TEXT_FIELD))
    if needs == "captions":
        return bool(item.caption_in and item.caption_out and _path(item))
    return True


def coverage_warnings(measurer: Measurer, total: int) -> list[str]:
    """One line per need that some items lack: which metrics it leaves measured on a subset, and which items."""
    by_need: dict[str, list[str]] = defaultdict(list)
    for name in measurer.unmeasured:
        by_need[M.METRICS[name].needs].append(name)
    lines = []
    for needs, names in by_need.items():
        ids = measurer.unmeasured[names[0]]
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        lines.append(f"{', '.join(names)} measured on {total - len(ids)} of {total} items; the items without "
                     f"{NEEDS_TEXT[needs]}: {shown}")
    return lines


# ---- aggregating -------------------------------------------------------------------------------------------


def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity: they are written as null."""
    return x if math.isfinite(x) else None


def summarise(measurer: Measurer, tally: Tally) -> dict[str, dict]:
    """metric → {value, ci_low, ci_high, n, items, higher_is_better, per_sample}. Intervals resample items
    (every sample of an item moves together), the unit a dataset is drawn in."""
    out: dict[str, dict] = {}
    for name in measurer.active:
        if name in M.SET_METRICS:
            groups = tally.features.get(name) or {}
            if len(groups) < 2:
                continue
            ref = M.gaussian_fit(measurer.reference_features(name))
            parts = [np.concatenate(v) for v in groups.values()]
            stat = lambda idx, parts=parts, ref=ref: M.frechet_distance(  # noqa: E731
                np.concatenate([parts[i] for i in idx]), ref)
            value, low, high = M.bootstrap_ci(np.arange(len(parts)), stat, n=N_BOOT_SET, recentre=True)
            n, n_items, per_sample = sum(len(p) for p in parts), len(parts), None
        else:
            samples = tally.values.get(name) or []
            if not samples:
                continue
            by_item: dict[str, list[float]] = defaultdict(list)
            for s in samples:
                if s["value"] is not None:  # NaN/inf outputs (e.g. an fp16 overflow) are kept as null, not averaged
                    by_item[s["item"]].append(s["value"])
            if not by_item:
                continue
            value, low, high = M.bootstrap_ci(np.array([np.mean(v) for v in by_item.values()]), n=N_BOOT)
            n, n_items, per_sample = sum(len(v) for v in by_item.values()), len(by_item), samples
        out[name] = {
            "value": _finite(value), "ci_low": _finite(low), "ci_high": _finite(high), "n": n, "items": n_items,
            "higher_is_better": M.METRICS[name].higher_is_better, "per_sample": per_sample,
        }
        if per_sample is not None and n < len(per_sample):
            out[name]["non_finite"] = len(per_sample) - n
    return out


# ---- the grid ---------------------------------------------------------------------------------------------


def _fit(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, h, w) in [0, 1] scaled to fit height × width (aspect kept), centred on white."""
    h, w = image.shape[-2:]
    scale = min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None].float(), (nh, nw), mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp(0, 1)
    cell = torch.ones(3, height, width)
    top, left = (height - nh) // 2, (width - nw) // 2
    cell[:, top : top + nh, left : left + nw] = image
    return cell


def _missing_cell(height: int, width: int) -> torch.Tensor:
    """A crossed-out cell (white, gray diagonals) where an item has no such image, unlike a white image."""
    cell = torch.ones(3, height, width)
    rows = torch.arange(height)
    for cols in ((rows * (width - 1)) // max(1, height - 1), (width - 1) - (rows * (width - 1)) // max(1, height - 1)):
        cell[:, rows, cols] = 0.6
    return cell


def grid_cells(measurer: Measurer, shown: list[Item], columns: list[str], outputs: dict) -> tuple[torch.Tensor, int]:
    """Rows of input | target | each variant × scale for the first items; crossed out where a cell is missing."""
    first = next(iter(outputs.values()))
    height, width = first.shape[-2:]
    with_input = any(_shown_path(i) for i in shown)
    with_target = any(i.target for i in shown)
    cells = []
    for item in shown:
        row = []
        if with_input:
            from .images import open_image

            shown_path = _shown_path(item)
            row.append(open_image(shown_path, background=measurer.background) if shown_path else None)
        if with_target:
            row.append(measurer.target(item, (height, width)) if item.target else None)
        row += [outputs.get((item.id, c)) for c in columns]
        for cell in row:
            if cell is None:
                cells.append(_missing_cell(height, width))
                continue
            if not isinstance(cell, torch.Tensor):
                from .images import pil_to_tensor

                cell = _to_unit(pil_to_tensor(cell))
            cells.append(_fit(cell.reshape(-1, *cell.shape[-3:])[0], height, width))
    return torch.stack(cells), with_input + with_target + len(columns)


def _font(size: int = 11) -> tuple[Any, bool]:
    """A font for the grid's labels, and whether it has Greek letters (DejaVu Sans where installed, else
    Pillow's own font, which has not: γ is then written "g")."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size), True
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size), False  # FreeType (Pillow ≥ 10.1)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default(), False


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """`text` in lines no wider than `width` pixels: at spaces, else after a ':', '-' or '/' inside a word
    that is too long, else anywhere in it."""
    import re

    def fits(t: str) -> bool:
        return font.getlength(t) <= width

    tokens = [(part, j == 0 and i > 0) for i, word in enumerate(text.split())
              for j, part in enumerate(re.findall(r"[^:/-]+[:/-]*|[:/-]+", word))]
    lines: list[str] = []
    for part, space in tokens:
        glue = " " if space else ""
        if lines and fits(lines[-1] + glue + part):
            lines[-1] += glue + part
            continue
        while not fits(part) and len(part) > 1:
            cut = next((k for k in range(len(part) - 1, 0, -1) if fits(part[:k])), 1)
            lines.append(part[:cut])
            part = part[cut:]
        lines.append(part)
    return lines or [""]


def labelled_grid(cells: torch.Tensor, columns: int, labels: list[str], rows: list[str],
                  pad: int = 2) -> tuple[Any, dict]:
    """The grid of `cells` (B, 3, h, w) in [0, 1], `columns` wide, as a PIL image with `labels` above the
    columns and the `rows` (item ids) on the left. Cells smaller than GRID_MIN_CELL pixels are scaled up by
    a whole factor (nearest), so 16-pixel outputs stay readable under their labels. Returns the image and
    its layout: {top, left, cell: [height, width], pad, scale} (cell (r, c) starts at top + pad + r·(height
    + pad), left + pad + c·(width + pad))."""
    from PIL import Image, ImageDraw

    from .media import to_grid, to_pil

    h, w = cells.shape[-2:]
    scale = max(1, math.ceil(GRID_MIN_CELL / min(h, w)))
    if scale > 1:
        cells = cells.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    h, w = h * scale, w * scale
    body = to_pil(to_grid(cells, columns, pad))
    font, greek = _font()
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (9, 2)
    line = ascent + descent + 1
    heads = [_wrap(label if greek else label.replace("γ", "g"), font, w) for label in labels]
    names = [_wrap(name, font, max(GRID_MIN_CELL, min(w, 120)))[: max(1, h // line)] for name in rows]
    top = pad + line * max(len(lines) for lines in heads) + pad
    left = pad + max(math.ceil(font.getlength(t)) for lines in names for t in lines) + pad
    canvas = Image.new("RGB", (left + body.width, top + body.height), "white")
    canvas.paste(body, (left, top))
    draw = ImageDraw.Draw(canvas)
    for c, lines in enumerate(heads):
        for k, text in enumerate(lines):
            draw.text((left + pad + c * (w + pad), pad + k * line), text, fill="black", font=font)
    for r, lines in enumerate(names):
        for k, text in enumerate(lines):
            draw.text((pad, top + pad + r * (h + pad) + k * line), text, fill="black", font=font)
    return canvas, {"top": top, "left": left, "cell": [h, w], "pad": pad, "scale": scale}


# ---- writing ---------------------------------------------------------------------------------------------


def _fmt(m: dict, total: int) -> str:
    """A table cell: value [CI], and "(k of N items)" when the metric covers only some of the N items."""
    subset = f" ({m['items']} of {total} items)" if m.get("items", total) < total else ""
    if m["value"] is None:
        return "—" + subset
    lo, hi = m["ci_low"], m["ci_high"]
    text = f"{m['value']:.4g} [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else f"{m['value']:.4g}"
    return text + subset


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def markdown(results: dict) -> str:
    names = [n for n in results["metrics"] if any(n in r["metrics"] for r in results["records"])]
    seeds = results["seeds"]
    how = "; ".join(part for part in (
        f"{results.get('scheduler')}, η={results['eta']:g}" if results.get("scheduler") else "",
        f"{results['dtype']} on {results['device']}" if results.get("dtype") else "") if part)
    lines = [
        f"## {results['model']} on {results['data']}", "",
        f"Task `{results['task']}`: {_plural(results['items'], 'item')}; {'seed' if len(seeds) == 1 else 'seeds'} "
        f"{', '.join(map(str, seeds))}; {_plural(results['samples_per_item'], 'sample')} per item and seed; "
        f"{_plural(results['steps'], 'step')}" + (f" ({how})" if how else "") + ". "
        f"95 % bootstrap intervals over items ({results.get('bootstrap_resamples', N_BOOT)} resamples).", "",
    ]
    if names:
        arrows = [("↑" if M.METRICS[n].higher_is_better else "↓") for n in names]
        lines += ["| method | γ | " + " | ".join(f"{n} {a}" for n, a in zip(names, arrows, strict=True)) + " |",
                  "|---|---|" + "---|" * len(names)]
        for r in results["records"]:
            cells = [_fmt(r["metrics"][n], results["items"]) if n in r["metrics"] else "" for n in names]
            gamma = f"{r['guidance']:g}" + (f" / γI={r['image_guidance']:g}" if r["image_guidance"] is not None else "")
            lines.append(f"| {r['method']} | {gamma} | " + " | ".join(cells) + " |")
        lines.append("")
    if results["skipped"]:
        lines += ["Skipped metrics:", ""] + [f"- **{k}**: {v}" for k, v in results["skipped"].items()] + [""]
    if results.get("coverage"):
        lines += ["Measured on some items only:", ""] + [f"- {w}" for w in results["coverage"]] + [""]
    lines += [f"samples.png columns: {' | '.join(results['grid_columns'])} (first {results['grid_items']} items)", ""]
    return "\n".join(lines)


def check_out(out: Path) -> None:
    """Before any sampling: --out must be a folder (or not exist yet) and none of the files it gets may be
    a folder."""
    if out.exists() and not out.is_dir():
        raise PriorswapError(f"--out {out} is a file; give a folder")
    for name in OUTPUTS:
        if (out / name).is_dir():
            raise PriorswapError(f"could not write {out / name}: Is a directory (it would hold this run's "
                                 f"{name}; remove it or choose another --out); nothing was sampled")


def write_outputs(out: Path, results: dict, picture: Any = None, record: dict | None = None) -> None:
    """results.json, results.md and samples.png (the PIL image `picture`, with the provenance `record`), all or
    nothing (`priorswap.media.write_together`): the files of a previous run in `out` are replaced only once
    all three are written, and kept when one fails (a PriorswapError naming the file)."""
    from .media import write_together
    from .provenance import png_info

    text = json.dumps(results, indent=1, allow_nan=False)
    page = markdown(results)
    files = [(out / "results.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8")),
             (out / "results.md", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))]
    if picture is not None:
        files.append((out / "samples.png", lambda tmp: picture.save(tmp, format="PNG", pnginfo=png_info(record))))
    write_together(files)


# ---- the run -----------------------------------------------------------------------------------------------


def _console(stderr: bool) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


@dataclass
class _Grid:
    """The first sample of the first seed, for the first items, per column (variant × scale), and the run
    record of each column's first cell (for samples.png's provenance)."""

    items: list[Item]
    columns: list[str] = field(default_factory=list)
    outputs: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    records: dict[str, dict] = field(default_factory=dict)

    def keep(self, item: Item, column: str, seed: int, first_seed: int, images: torch.Tensor, record: dict) -> None:
        if seed == first_seed and any(i.id == item.id for i in self.items):
            self.outputs[(item.id, column)] = images[0]
            self.records.setdefault(column, record)


def _sample_variant(request: EvalRequest, variant: Variant, items: list[Item], measurer: Measurer,
                    grid: _Grid, progress: Any, bar: Any, plugins: Plugins, device: str) -> tuple[list[dict], dict]:
    """Loads the variant's pair once, samples every scale × seed × item with it; (records, the run record of
    its first sample)."""
    from .api import load_pair

    progress.update(bar, description=f"loading {variant.label}")
    pair = load_pair(
        request.model, variant.prior, registry_files=request.registry, offline=request.offline or None,
        allow_pickle=request.allow_pickle, dtype=request.dtype, device=device, adapters=variant.adapters,
        plugins=plugins,
    )
    if not pair.task.can_decode():  # before any sampling
        raise PriorswapError(f"'{request.model}' has no decoder here (no vae/ folder): measuring needs images")
    rec = pair.model.resolved.entry.recommended
    dual = "partial" in pair.task.levels
    steps = request.steps or rec.steps
    seeds = request.seeds or [0]
    image_scale = (request.image_guidance or rec.image_guidance or 1.0) if dual else None
    records, first = [], {}
    for gamma in request.guidance or [rec.guidance]:
        rule = pair.guidance_for(variant.method(dual), gamma, image_scale)
        column = f"{variant.label} " + (f"γT={gamma:g} γI={image_scale:g}" if dual else f"γ={gamma:g}")
        grid.columns.append(column)
        tally = Tally()
        for seed in seeds:
            for item in items:
                progress.update(bar, description=f"{column} seed {seed} item {item.id}")
                result = pair.sample(item.inputs, guidance=rule, steps=steps, seed=seed, decode=True,
                                     num_samples=request.samples_per_item)
                if result.images is None:
                    raise PriorswapError(f"'{request.model}' has no decoder (vae/ folder): measuring needs images")
                first = first or result.record
                images = result.images.float().cpu()
                measurer.measure(item, images, seed, tally)
                grid.keep(item, column, seed, seeds[0], images, result.record)
                progress.advance(bar)
        records.append({
            "prior": variant.prior or "none", "method": variant.label, "rule": rule.name,
            "adapters": variant.adapters, "inserted": pair.inserted,
            "guidance": gamma, "image_guidance": image_scale,
            "metrics": summarise(measurer, tally),
        })
    return records, first


def _check_metrics(request: EvalRequest, task_name: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """The metrics to measure: the task's, or the subset `request.metrics` names (each once)."""
    if request.metrics is None:
        return names
    unknown = [m for m in request.metrics if m not in names]
    repeated = sorted({m for m in request.metrics if request.metrics.count(m) > 1})
    if unknown or not request.metrics:
        what = f"{', '.join(unknown)} not measured" if unknown else "no metric given"
        remark = " (clip-image-target comes with clip-image)" if "clip-image" in names else ""
        raise PriorswapError(f"--metrics {','.join(request.metrics)}: {what}; task '{task_name}' measures "
                             f"{', '.join(names)}{remark}")
    if repeated:
        raise PriorswapError(f"--metrics repeats {', '.join(repeated)}: give each value once")
    return tuple(request.metrics)


def grid_record(results: dict, grid: _Grid, layout: dict, command: str | None) -> dict:
    """samples.png's provenance record (`priorswap info samples.png`): the versions, device, model, sampling
    settings and dataset of the run, the grid's rows (item ids, with their inputs and input-file hashes) and
    columns, and per output column its prior, adapters and guidance rule, from the run record of its first
    cell."""
    first = next(iter(grid.records.values()))
    keep = ("priorswap", "torch", "device", "task", "model", "steps", "scheduler", "eta", "autocast")
    record = {k: first.get(k) for k in keep}
    shown = [c for c in results["grid_columns"] if c in grid.records]
    record.update({
        "seed": results["seeds"][0], "num_samples": results["samples_per_item"], "command": command,
        "eval": {"data": results["data"], "results": "results.json", "rows": [i.id for i in grid.items],
                 "columns": results["grid_columns"], "layout": layout},
        "columns": {c: {k: grid.records[c].get(k) for k in ("prior", "adapters", "guidance")} for c in shown},
        "inputs": {i.id: i.inputs.model_dump(mode="json") for i in grid.items},
    })
    from .provenance import input_hashes

    record["input_sha256"] = {i.id: input_hashes(i.inputs) for i in grid.items}
    return record


def run(request: EvalRequest) -> dict:
    """Evaluates `request.model` on the dataset folder `request.data`; returns results.json's content and,
    when `request.out` is set, writes the three files there (only once everything has been measured).
    The dataset is validated before any weights load."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from . import __version__
    from .hub import is_offline

    if request.data is None:
        raise PriorswapError("a dataset evaluation needs --data DIR")
    if request.samples_per_item < 1:
        raise PriorswapError(f"--samples-per-item must be at least 1, got {request.samples_per_item}")
    if request.out is not None:
        check_out(request.out)
    plugins = get_plugins()
    task_name, task_cls, entry = task_and_entry(request.model, request.registry, plugins,
                                                allow_pickle=request.allow_pickle)
    checks.image_guidance(request.image_guidance, task_cls)  # `sample` refuses it too: never silently ignored
    if not task_cls.metrics:
        raise PriorswapError(f"task '{task_name}' declares no metrics (Task.metrics): nothing to measure")
    M.check_metric_names(task_cls.metrics, f"task '{task_name}'")
    names = _check_metrics(request, task_name, tuple(task_cls.metrics))
    items = load_items(request.data, task_cls, request.limit, entry)
    out, err = _console(False), _console(True)
    device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with err.status("preparing the metrics"):
        measurer = Measurer(names, items, request.clip, device, is_offline(request.offline or None),
                            request.allow_pickle, task_cls.image_background)
    for name, reason in measurer.skipped.items():
        err.print(f"[yellow]skipped {name}:[/] {reason}", highlight=False)
    if not measurer.active:  # before any weights load: hours of sampling would measure nothing
        raise PriorswapError(f"none of the metrics ({', '.join(measurer.declared)}) can be measured here (reasons "
                             "above): fix what they name, or choose others with --metrics; nothing was sampled")
    coverage = coverage_warnings(measurer, len(items))
    for line in coverage:
        err.print(f"[yellow]warning:[/] {line}", highlight=False)
    runs = variants(request)
    seeds = request.seeds or [0]
    total = len(runs) * len(request.guidance or [0]) * len(seeds) * len(items)
    grid = _Grid(items[:GRID_ITEMS])
    records: list[dict] = []
    first: dict = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, disable=not err.is_terminal and os.environ.get("CI") == "true") as progress:
        bar = progress.add_task("loading", total=total)
        for variant in runs:
            done, run_record = _sample_variant(request, variant, items, measurer, grid, progress, bar, plugins,
                                               device)
            records += done
            first = first or run_record
    results = {
        "model": request.model, "task": task_name, "data": str(Path(request.data).expanduser().resolve()),
        "items": len(items), "item_ids": [i.id for i in items], "seeds": seeds,
        "samples_per_item": request.samples_per_item, "steps": first["steps"], "scheduler": first["scheduler"],
        "eta": first["eta"], "dtype": (first["model"] or {}).get("dtype"), "device": first["device"],
        "resolution": (first["model"] or {}).get("resolution"),
        "priorswap": __version__, "torch": torch.__version__, "bootstrap_resamples": N_BOOT,
        "bootstrap_resamples_set": N_BOOT_SET,
        "clip": (request.clip or M.DEFAULT_CLIP) if measurer.clip is not None else None,
        "metrics": measurer.declared, "skipped": measurer.skipped, "unmeasured_items": measurer.unmeasured,
        "coverage": coverage, "records": records,
        "grid_columns": (["input"] * any(_shown_path(i) for i in grid.items)
                         + ["target"] * any(i.target for i in grid.items) + grid.columns),
        "grid_items": len(grid.items),
    }
    cells, n_columns = grid_cells(measurer, grid.items, grid.columns, grid.outputs)
    picture, layout = labelled_grid(cells, n_columns, results["grid_columns"], [i.id for i in grid.items])
    results["grid_layout"] = layout
    out.print(markdown(results), markup=False, highlight=False, soft_wrap=True)
    if request.out is not None:
        write_outputs(request.out, results, picture, grid_record(results, grid, layout, request.command))
        err.print(f"results → {request.out}/results.json, results.md, samples.png", highlight=False)
    return results
