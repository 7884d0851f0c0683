"""The evaluation harness: sample a toy model with several guidance rules and scales, measure,
and report with bootstrap confidence intervals (markdown table, PNG plot, results.json)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

import priorswap
from priorswap import Guidance, Sampler, Term
from priorswap.dataset_eval import Variant
from priorswap.engine import Route

from . import data
from .metrics import bootstrap, frechet_distance, gaussian, psnr_per_sample, ssim_per_sample

if TYPE_CHECKING:
    from priorswap.dataset_eval import EvalRequest

BATCH = 250
N_BOOT = 300  # bootstrap resamples of the intervals


@dataclass
class Record:
    """One number of results.json."""

    model: str
    prior: str
    method: str
    guidance: float
    metric: str
    value: float
    ci_low: float
    ci_high: float


class Reference:
    """Classifier features of the real held-out digits (overall and per class)."""

    def __init__(self) -> None:
        from .classifier import load_classifier

        self.classifier = load_classifier()
        images, labels = data.load_digits16("test")
        self.images, self.labels = images, labels
        feats = self.features(images)
        self.overall = gaussian(feats)
        self.per_class = {int(c): gaussian(feats[labels.numpy() == c]) for c in labels.unique()}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        return torch.cat([self.classifier.features(b) for b in images.split(BATCH)]).double().numpy()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> np.ndarray:
        return torch.cat([self.classifier(b).argmax(1) for b in images.split(BATCH)]).numpy()


MIN_PER_CLASS = 10  # samples of a class needed before its FD is reported


def _fd_record(base: dict, name: str, feats: np.ndarray, ref, n_boot: int) -> Record:
    point, low, high = bootstrap(feats, lambda f: frechet_distance(f, ref), n=n_boot, recentre=True)
    return Record(**base, metric=name, value=point, ci_low=low, ci_high=high)


def _mean_record(base: dict, name: str, values: np.ndarray, n_boot: int) -> Record:
    point, low, high = bootstrap(values, n=n_boot)
    return Record(**base, metric=name, value=point, ci_low=low, ci_high=high)


def _sample(pair, inputs: dict, guidance: Guidance, steps: int, seed: int) -> torch.Tensor:
    """Final latents in [-1, 1] pixel space, sampled in batches of at most BATCH."""
    key = next(k for k, v in inputs.items() if isinstance(v, list))
    out = []
    for start in range(0, len(inputs[key]), BATCH):
        chunk = {k: (v[start : start + BATCH] if k == key else v) for k, v in inputs.items()}
        out.append(pair.sample(chunk, guidance=guidance, steps=steps, seed=seed + start, decode=False).latents)
    return torch.cat(out).clamp(-1, 1)


def samples_used(task: str, samples: int) -> int:
    """How many samples per method `task_protocol` draws for `samples`: the view and edit tasks take a whole
    number per angle or instruction, so they round down (64 → 60 for the view task's five angles)."""
    return sum(len(labels) for _, _, labels in task_protocol(task, samples))


def task_protocol(task: str, samples: int) -> list[tuple[dict, Callable[[], torch.Tensor] | None, np.ndarray]]:
    """[(task inputs, ground truth or None, labels of the targets)] covering `samples` samples."""
    test_images, test_labels = data.load_digits16("test")
    if task == "toy-class":
        labels = [i % 10 for i in range(samples)]
        return [({"class_label": labels}, None, np.array(labels))]
    rng = np.random.default_rng(0)
    if task == "toy-view":
        angles = [float(a) for a in data.VIEW_ANGLES_EVAL]
        per = max(1, samples // len(angles))
        idx = rng.choice(len(test_images), per, replace=per > len(test_images)).tolist()
        src = test_images[idx]
        return [
            ({"source_index": idx, "angle": a}, data.rotate(src, torch.full((per,), a)), test_labels[idx].numpy())
            for a in angles
        ]
    if task == "toy-edit":
        instructions = list(data.INSTRUCTIONS)
        per = max(1, samples // len(instructions))
        idx = rng.choice(len(test_images), per, replace=per > len(test_images)).tolist()
        src = test_images[idx]
        ids = {name: i for i, name in enumerate(data.INSTRUCTIONS)}
        return [
            (
                {"source_index": idx, "instruction": name},
                data.apply_instruction(src, torch.full((per,), ids[name])),
                test_labels[idx].numpy(),
            )
            for name in instructions
        ]
    raise priorswap.PriorswapError(f"no evaluation protocol for task '{task}'")


def evaluate(
    model: str,
    variants: list[Variant],
    guidances: list[float],
    samples: int = 200,
    seeds: tuple[int, ...] = (0, 1, 2),
    steps: int = 25,
    image_guidance: float | None = None,
    n_boot: int = N_BOOT,
    progress: Callable[[str], None] | None = None,
    reference: Reference | None = None,
) -> list[Record]:
    """Samples `model` with every variant × guidance × seed and measures it; seeds pooled into the CIs."""
    reference = reference or Reference()
    records: list[Record] = []
    pairs = {}
    for v in variants:
        pairs[v] = priorswap.load_pair(model, prior=v.prior, adapters=v.adapters)
    task = pairs[variants[0]].task
    protocol = task_protocol(task.name, samples)
    dual = "partial" in task.levels
    for v, pair in pairs.items():
        for gamma in guidances:
            method = ("dual-" if dual else "") + ("cfg" if v.prior is None else "prior-swap")
            rule = pair.guidance_for(method, gamma, image_guidance)
            if progress:
                progress(f"{model} {v.label} γ={gamma:g}")
            images, truth, labels = [], [], []
            for seed in seeds:
                for inputs, target, target_labels in protocol:
                    images.append(_sample(pair, inputs, rule, steps, seed))
                    if target is not None:
                        truth.append(target)
                    labels.append(target_labels)
            x = torch.cat(images)
            y = np.concatenate(labels)
            base = {"model": model, "prior": v.prior or "none", "method": v.label, "guidance": gamma}
            feats = reference.features(x)
            records.append(_fd_record(base, "fd", feats, reference.overall, n_boot))
            if task.name == "toy-class":
                for c in range(10):
                    if (y == c).sum() < MIN_PER_CLASS:  # too few samples for a covariance: no per-class FD
                        continue
                    records.append(_fd_record(base, f"fd_class{c}", feats[y == c], reference.per_class[c], n_boot))
                records.append(_mean_record(base, "accuracy", (reference.predict(x) == y).astype(float), n_boot))
            else:
                t = torch.cat(truth)
                records.append(_mean_record(base, "psnr", psnr_per_sample(x, t), n_boot))
                records.append(_mean_record(base, "ssim", ssim_per_sample(x, t), n_boot))
                records.append(_mean_record(base, "accuracy", (reference.predict(x) == y).astype(float), n_boot))
    return records


@torch.no_grad()
def unconditional_fd(
    model: str, samples: int = 500, seeds: tuple[int, ...] = (0, 1, 2), steps: int = 25,
    n_boot: int = 300, reference: Reference | None = None,
) -> Record:
    """FD of a model's unconditional samples (its null branch alone, γ = 0): how good is its prior?"""
    reference = reference or Reference()
    registry = priorswap.Registry.load(plugin_files=priorswap.get_plugins().registry_files)
    from priorswap.loading import load, resolve

    plugins = priorswap.get_plugins()
    resolved = resolve(model, registry, plugins)
    role = "prior" if "prior" in resolved.entry.roles else "model"
    denoiser = load(resolved, role, plugins).denoiser
    route = Route(denoiser)
    rule = Guidance("unconditional", (Term(1.0, "model", "null"),))
    size = denoiser.latent_size
    images = []
    for seed in seeds:
        for start in range(0, samples, BATCH):
            n = min(BATCH, samples - start)
            sched = priorswap.make_scheduler("ddim", denoiser.scheduler_config)
            sampler = Sampler({"model": route}, {("model", "null"): denoiser.null_condition()}, rule, sched)
            g = torch.Generator().manual_seed(seed * 100_003 + start)
            noise = torch.randn(n, denoiser.latent_space.channels, size, size, generator=g)
            images.append(sampler.run(noise, steps).clamp(-1, 1))
    feats = reference.features(torch.cat(images))
    base = {"model": model, "prior": "none", "method": "unconditional", "guidance": 0.0}
    return _fd_record(base, "fd", feats, reference.overall, n_boot)


def real_data_floor(
    samples: int = 500, n_boot: int = 300, reference: Reference | None = None, augmented: bool = True
) -> Record:
    """FD of real training digits against the held-out digits: the best achievable. `augmented`:
    with the training augmentation (the base models' training distribution) or as they are."""
    reference = reference or Reference()
    train, _ = data.load_digits16("train")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train), generator=g)[:samples]
    digits = data.augment(train[idx], g) if augmented else train[idx]
    feats = reference.features(digits)
    name = "real-train-digits" + ("-augmented" if augmented else "")
    base = {"model": name, "prior": "none", "method": "data", "guidance": 0.0}
    return _fd_record(base, "fd", feats, reference.overall, n_boot)


def run_settings(
    model: str, variants: list[Variant], guidances: list[float], samples: int, seeds: tuple[int, ...], steps: int,
    image_guidance: float | None = None, n_boot: int = N_BOOT,
) -> dict:
    """What `evaluate` with these arguments measures with, for results.json: the model and its task, the
    priors and methods, guidance scales (and the image scale of dual guidance), samples (as asked, and as the
    task's protocol draws them per seed), seeds, steps, scheduler, η, bootstrap resamples and versions."""
    from priorswap.loading import resolve, task_of

    plugins = priorswap.get_plugins()
    registry = priorswap.Registry.load(plugin_files=plugins.registry_files)
    entry = resolve(model, registry, plugins).entry
    task_name, task_cls = task_of(entry, model, plugins)
    dual = "partial" in task_cls.levels
    rec = entry.recommended
    return {
        "model": model,
        "task": task_name,
        "priors": list(dict.fromkeys(v.prior or "none" for v in variants)),
        "methods": [v.label for v in variants],
        "rules": sorted({v.method(dual) for v in variants}),
        "guidance": [float(g) for g in guidances],
        "image_guidance": ((rec.image_guidance or 1.0) if image_guidance is None else image_guidance) if dual
        else None,
        "samples": samples,
        "samples_per_seed": sum(len(next(v for v in inputs.values() if isinstance(v, list)))
                                for inputs, _, _ in task_protocol(task_name, samples)),
        "seeds": list(seeds),
        "steps": steps,
        "scheduler": rec.scheduler,
        "eta": rec.eta,
        "bootstrap_resamples": n_boot,
        "min_per_class": MIN_PER_CLASS if task_name == "toy-class" else None,
        "device": "cpu",
        "dtype": "float32",
        "priorswap": priorswap.__version__,
        "torch": torch.__version__,
    }


def run_request(request: EvalRequest) -> None:
    """`priorswap eval` without --data for a toy model (registered for toy-class, -view and -edit with the
    register_evaluators hook): every prior of `request.priors` (None = CFG; plus each prior without adapters
    with `ablate_adapters`) × `guidance` (default 1.5, 2, 3, 5) × `seeds` (default 0, 1, 2), `samples` per
    method, scale and seed (default 200), `steps` DDIM steps (default 25); prints the markdown table and
    writes results.json, results.md and results.png to `request.out` when set. It runs the shipped toy models
    in float32 on the CPU: `request.dtype`, `device` and `registry` other than those are refused
    (`check_request`); `offline` changes nothing (nothing is downloaded)."""
    from rich.console import Console

    check_request(request)
    variants = [Variant(p) for p in request.priors]
    if request.ablate_adapters:
        variants += [Variant(p, adapters=False) for p in request.priors if p is not None]
    console = Console()
    options = {"guidances": list(request.guidance or (1.5, 2, 3, 5)), "samples": request.samples or 200,
               "seeds": tuple(request.seeds or (0, 1, 2)), "steps": request.steps or 25,
               "image_guidance": request.image_guidance}
    settings = run_settings(request.model, variants, **options)
    records = evaluate(request.model, variants, **options, progress=lambda msg: console.print(f"[dim]{msg}[/]"))
    console.print(markdown(records, request.model))
    if request.out is not None:
        write_results(records, request.out, request.model, settings)
        console.print(f"results → {request.out}/results.json, results.md, results.png")


def check_request(request: EvalRequest) -> None:
    """Refuses the loading options the toy evaluator cannot honour, rather than ignoring them: it samples the
    shipped toy models in float32 on the CPU, looked up in the shipped registry."""
    given = []
    if request.dtype is not None and request.dtype != torch.float32:
        name = str(request.dtype).removeprefix("torch.")
        given.append(f"--dtype { {'float16': 'fp16', 'bfloat16': 'bf16'}.get(name, name)}")
    if request.device is not None and torch.device(request.device).type != "cpu":
        given.append(f"--device {request.device}")
    if request.registry:
        given.append(f"--registry {' '.join(map(str, request.registry))}")
    if given:
        raise priorswap.PriorswapError(
            f"{', '.join(given)}: the toy plugin's built-in evaluator (eval without --data) samples the shipped "
            "toy models in float32 on the CPU and does not take this; leave it out, or measure on a dataset "
            "folder with --data DIR, which does (docs/eval.md)")


def write_results(records: list[Record], out: Path, title: str, settings: dict | None = None) -> None:
    """results.json (the run's `settings`, e.g. from `run_settings`, and its `records`), results.md (a table
    per metric) and results.png (metric vs γ per method)."""
    out.mkdir(parents=True, exist_ok=True)
    results = {**(settings or {}), "records": [asdict(r) for r in records]}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(records, title))
    plot(records, out / "results.png", title)


def markdown(records: list[Record], title: str = "") -> str:
    lines = [f"## {title}", ""] if title else []
    metrics = [m for m in dict.fromkeys(r.metric for r in records) if not m.startswith("fd_class")]
    for metric in metrics:
        rows = [r for r in records if r.metric == metric]
        gammas = sorted({r.guidance for r in rows})
        methods = list(dict.fromkeys(r.method for r in rows))
        lines += [f"**{metric}** ({'lower' if metric.startswith('fd') else 'higher'} is better; 95 % CI)", ""]
        lines += ["| method | " + " | ".join(f"γ={g:g}" for g in gammas) + " |",
                  "|---|" + "---|" * len(gammas)]
        for method in methods:
            cells = []
            for g in gammas:
                r = next((r for r in rows if r.method == method and r.guidance == g), None)
                cells.append("" if r is None else f"{r.value:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(records: list[Record], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in dict.fromkeys(r.metric for r in records) if not m.startswith("fd_class")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for method in dict.fromkeys(r.method for r in records if r.metric == metric):
            rows = sorted((r for r in records if r.metric == metric and r.method == method), key=lambda r: r.guidance)
            g = [r.guidance for r in rows]
            ax.plot(g, [r.value for r in rows], marker="o", label=method)
            ax.fill_between(g, [r.ci_low for r in rows], [r.ci_high for r in rows], alpha=0.2)
        ax.set_xlabel("guidance γ")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
