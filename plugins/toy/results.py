"""Generates docs/results-toy.md: the whole toy evaluation in one command."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from .evaluate import Record, Reference, Variant, evaluate, markdown, plot, real_data_floor, unconditional_fd

TASK_MODELS = ("toy-digits-class", "toy-digits-view", "toy-digits-edit")
PRIORS = ("toy-digits-base", "toy-digits-dit-v")
GAMMAS = (1.25, 1.5, 2.0, 3.0)
VARIANTS = (Variant(None), Variant("toy-digits-base"), Variant("toy-digits-dit-v"), Variant("toy-digits-dit-v", False))
HEADLINE = {"toy-digits-class": ("fd", "accuracy"), "toy-digits-view": ("psnr", "ssim"),
            "toy-digits-edit": ("psnr", "ssim")}


def compare_to_cfg(records: list[Record], metric: str) -> list[tuple[Record, Record, str]]:
    """Per γ: (swap record, CFG record, verdict) — better / worse when the 95 % CIs do not overlap, else
    no clear difference."""
    lower_better = metric.startswith("fd")
    out = []
    for gamma in sorted({r.guidance for r in records}):
        rows = {r.method: r for r in records if r.metric == metric and r.guidance == gamma}
        base = rows.pop("cfg", None)
        for r in rows.values() if base is not None else ():
            if r.ci_high < base.ci_low:
                word = "better" if lower_better else "worse"
            elif r.ci_low > base.ci_high:
                word = "worse" if lower_better else "better"
            else:
                word = "no clear difference"
            out.append((r, base, word))
    return out


def verdicts(records: list[Record], metric: str) -> list[str]:
    """The comparisons of `compare_to_cfg` as markdown list items."""
    return [f"- γ={r.guidance:g}, {r.method}: {metric} {r.value:.3g} vs CFG {base.value:.3g} → **{word}**"
            for r, base, word in compare_to_cfg(records, metric)]


MEASURED_START, MEASURED_END = "<!-- measured:start -->", "<!-- measured:end -->"


def zoo_table(uncond: list[Record], source: str) -> str:
    """The measured table of docs/toy-zoo.md: training time and final loss from each model's
    training.json, unconditional FD from `uncond`, the classifier's held-out accuracy."""
    from .classifier import CLASSIFIER_ID, weights_dir

    fd = {r.model: r for r in uncond}

    def stats(model: str) -> dict:
        return json.loads((weights_dir() / model / "training.json").read_text())

    lines = [
        f"Unconditional FD measured by {source}; floors: real training digits vs the test split.",
        "",
        "| id | steps | training time | final loss (mean of the last 10 % of steps) | unconditional FD [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for name, r in fd.items():
        if r.method == "data":
            lines.append(f"| {name} (floor) | — | — | — | {r.value:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}] |")
    for name, r in fd.items():
        if r.method == "data":
            continue
        s = stats(name)
        lines.append(f"| `{name}` | {s['steps']:,} | {s['seconds'] / 60:.1f} min | {s['final_loss']:.4f} "
                     f"| {r.value:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}] |")
    clf = stats(CLASSIFIER_ID)
    lines += ["", f"`{CLASSIFIER_ID}`: {clf['steps']:,} steps, {clf['seconds'] / 60:.1f} min, "
              f"held-out accuracy {clf['test_accuracy']:.3f} on the 360 test digits."]
    return "\n".join(lines)


def update_zoo_page(page: Path, uncond: list[Record], source: str) -> None:
    """Rewrites the block between the measured markers of docs/toy-zoo.md."""
    text = page.read_text()
    if MEASURED_START not in text or MEASURED_END not in text:
        raise ValueError(f"{page} lacks the {MEASURED_START} … {MEASURED_END} markers")
    head, rest = text.split(MEASURED_START, 1)
    _, tail = rest.split(MEASURED_END, 1)
    page.write_text(f"{head}{MEASURED_START}\n{zoo_table(uncond, source)}\n{MEASURED_END}{tail}")


def machine() -> str:
    """The CPU the numbers were measured on, for the page: model name (Linux), core count, architecture."""
    name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        name = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("model name")), "")
    return ", ".join(filter(None, [name or platform.processor(), f"{os.cpu_count()} CPUs", platform.machine()]))


def write_page(out: Path, samples: int = 200, seeds: tuple[int, ...] = (0, 1, 2), steps: int = 25) -> None:
    """Measures everything (minutes to an hour), saves results.json + run.json, renders the pages."""
    console = Console()
    start = time.perf_counter()
    reference = Reference()
    figures = out.parent / "results-toy"
    figures.mkdir(parents=True, exist_ok=True)

    console.print("unconditional sample quality")
    records = [real_data_floor(reference=reference), real_data_floor(reference=reference, augmented=False)]
    for model in (*PRIORS, *TASK_MODELS):
        records.append(unconditional_fd(model, samples=samples, seeds=seeds, steps=steps, reference=reference))
    for model in TASK_MODELS:
        records += evaluate(model, list(VARIANTS), list(GAMMAS), samples=samples, seeds=seeds, steps=steps,
                            reference=reference, progress=lambda m: console.print(f"[dim]{m}[/]"))
    run = {"samples": samples, "seeds": list(seeds), "steps": steps, "machine": machine(),
           "minutes": round((time.perf_counter() - start) / 60, 1)}
    (figures / "results.json").write_text(json.dumps([asdict(r) for r in records], indent=1))
    (figures / "run.json").write_text(json.dumps(run, indent=1))
    render_page(out)
    console.print(f"results → {out} ({run['minutes']} min)")


def summary(records: list[Record]) -> list[str]:
    """Counts of the swap-vs-CFG verdicts per task and method over γ and headline metrics."""
    lines = ["| task | method | better | no clear difference | worse |", "|---|---|---|---|---|"]
    words = ("better", "no clear difference", "worse")
    comparisons = [(model, r.method, word) for model in TASK_MODELS for metric in HEADLINE[model]
                   for r, _, word in compare_to_cfg([r for r in records if r.model == model], metric)]
    for model in TASK_MODELS:
        for method in dict.fromkeys(m for task, m, _ in comparisons if task == model):
            counts = [sum(c == (model, method, w) for c in comparisons) for w in words]
            lines.append(f"| {model} | {method} | " + " | ".join(map(str, counts)) + " |")
    any_better = any(w == "better" and "no adapters" not in m for _, m, w in comparisons)
    ablation = [w for _, m, w in comparisons if "no adapters" in m]
    verdict = ("At least one swap beat CFG somewhere (see the tables)." if any_better else
               "**No swap variant beat plain CFG on any headline metric at any γ: at this scale the prior swap "
               "does not help.**")
    verdict += (f" Without the adapters the cross-architecture swap is worse than CFG in {ablation.count('worse')} "
                f"of {len(ablation)} comparisons.")
    return [*lines, "", verdict]


def render_page(out: Path) -> None:
    """Writes the results page (and the zoo page's measured table) from results-toy/results.json and run.json."""
    figures = out.parent / "results-toy"
    records = [Record(**r) for r in json.loads((figures / "results.json").read_text())]
    run = json.loads((figures / "run.json").read_text())
    samples, seeds, steps = run["samples"], run["seeds"], run["steps"]
    uncond = [r for r in records if r.guidance == 0.0 and r.method in ("data", "unconditional")]
    zoo_page = out.parent / "toy-zoo.md"
    if zoo_page.exists():
        update_zoo_page(zoo_page, uncond, f"`priorswap toy results` ({samples}×{len(seeds)} samples, DDIM {steps})")
    else:
        Console(stderr=True).print(f"[yellow]note:[/] no {zoo_page} beside the page: the zoo's measured table "
                                   "(docs/toy-zoo.md) was not updated")
    sections = []
    for model in TASK_MODELS:
        mine = [r for r in records if r.model == model]
        plot(mine, figures / f"{model}.png", model)
        lines = [markdown(mine, model), f"![{model}](results-toy/{model}.png)", "", "Swap vs CFG (95 % CIs):", ""]
        for metric in HEADLINE[model]:
            lines += verdicts(mine, metric)
        sections.append("\n".join(lines) + "\n")
    cmd = f"priorswap toy results --samples {samples} --seeds {','.join(map(str, seeds))} --steps {steps}"
    page = [
        "# Toy results: does the prior swap help at toy scale?",
        "",
        f"Generated by `{cmd}` ({run['minutes']:.0f} min on {run['machine']}, "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} × {samples} samples per method and γ, DDIM {steps} "
        "steps; "
        "`priorswap toy results --render-only` re-renders this page from the saved numbers). Every number below "
        "comes from that command; `docs/results-toy/results.json` holds them all. FD = Fréchet distance between "
        "Gaussian fits of the toy classifier's penultimate features of the samples and of the held-out real digits "
        "(lower is better); accuracy = the classifier agrees with the requested class (class task) or the source "
        "digit's class (view and edit tasks); PSNR/SSIM against the exact transform of the source. Intervals: 95 % "
        "bootstrap over the pooled samples of all seeds (FD intervals re-centred on the estimate, as resampling with "
        "replacement inflates FD).",
        "",
        "Methods: `cfg` = plain CFG of the fine-tuned model; `swap:toy-digits-base` = the unconditional branch from "
        "the base UNet (same architecture, schedule, parameterization); `swap:toy-digits-dit-v` = from the DiT with "
        "v-prediction and a cosine schedule (cross-architecture: σ-matching and v→x̂0 conversion inserted); "
        "`(no adapters)` = the same DiT fed the model's raw timestep and read as ε — what the adapters are worth.",
        "",
        "## Summary",
        "",
        "Swap vs CFG verdicts, counted over γ ∈ {1.25, 1.5, 2, 3} and the headline metrics (class: FD, accuracy; "
        "view and edit: PSNR, SSIM); *better*/*worse* only where the 95 % CIs do not overlap.",
        "",
        *summary(records),
        "",
        "## How degraded is the fine-tuned models' own prior?",
        "",
        "Unconditional samples (the null branch alone, γ = 0). The method assumes the prior is clearly better "
        "than the fine-tuned model's own null branch; compare the rows:",
        "",
        "| model | FD [95 % CI] |",
        "|---|---|",
        *[f"| {r.model} | {r.value:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}] |" for r in uncond],
        "",
        *sections,
    ]
    out.write_text("\n".join(page))
