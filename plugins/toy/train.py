"""Training the toy zoo: seeded, deterministic, EMA weights, a rich progress bar.

    python -m priorswap.plugins.toy.train [--only ID ...] [--out DIR] [--scale S] [--threads N]

(or `priorswap toy train`). Every model is a real diffusers network trained with the standard
DDPM objective (uniform timesteps, MSE on the parameterization's target) and saved with
`save_pretrained(safe_serialization=True)` in a diffusers-style folder: `unet/` or `transformer/`,
`scheduler/`, `model_index.json` (`_class_name: ToyDigitsPipeline`) and `training.json` (stats).
Weights are stored in float16 (the loaders cast back to float32).

The recipe (`RECIPES`) follows the paper's setting: the priors get most of the budget; the
fine-tuned models start from the base UNet (new input channels and embeddings start at zero, so
step 0 is exactly the base) and are fine-tuned with 10 % condition dropout — the class model on a
small subset (15 % of the training digits).
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from priorswap.errors import PriorswapError

from . import data, models
from .classifier import CLASSIFIER_ID, train_classifier, weights_dir

ZOO: tuple[str, ...] = (
    CLASSIFIER_ID,
    "toy-digits-base",
    "toy-digits-dit-v",
    "toy-digits-class",
    "toy-digits-view",
    "toy-digits-edit",
)
PIPELINE_CLASS = "ToyDigitsPipeline"
TASKS = {"toy-digits-class": "toy-class", "toy-digits-view": "toy-view", "toy-digits-edit": "toy-edit"}
CLASS_SUBSET = 0.15  # fraction of the training digits the class model is fine-tuned on
DROPOUT = 0.10  # condition dropout of the single-condition fine-tunes (class, view)
EDIT_DROPOUT = 0.05  # edit: drop the image, the instruction, or both, each with this probability
EDIT_SOURCE_ROTATION = 10.0  # edit sources: training digits rotated by U(-10°, 10°)
VIEW_SOURCE_SHIFT = 1  # view sources: training digits shifted by {-1, 0, 1} pixels per axis


@dataclass(frozen=True)
class Recipe:
    steps: int
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 200
    ema_decay: float = 0.999


RECIPES: dict[str, Recipe] = {
    CLASSIFIER_ID: Recipe(steps=1500, batch_size=64, lr=2e-3, warmup=0, ema_decay=0.0),
    "toy-digits-base": Recipe(steps=6000),
    "toy-digits-dit-v": Recipe(steps=8000),
    "toy-digits-class": Recipe(steps=1200, lr=5e-4, warmup=50),
    "toy-digits-view": Recipe(steps=1500, lr=5e-4, warmup=50),
    "toy-digits-edit": Recipe(steps=1500, lr=5e-4, warmup=50),
}


@contextmanager
def progress_bar(enabled: bool = True):
    """A rich progress bar (a no-op stand-in when disabled)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not enabled, transient=False) as bar:
        yield bar


def _seed_for(name: str, seed: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


# ---- batches: (clean target x0, condition dict for models.call_unet / call_dit) -----------------
class Batches:
    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.images, self.labels = data.load_digits16("train")
        if name == "toy-digits-class":
            from sklearn.model_selection import train_test_split

            idx = torch.arange(len(self.labels)).numpy()
            subset, _ = train_test_split(idx, train_size=CLASS_SUBSET, random_state=seed,
                                         stratify=self.labels.numpy())
            subset = torch.tensor(sorted(subset))
            self.images, self.labels = self.images[subset], self.labels[subset]

    def __call__(self, batch: int, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        idx = torch.randint(0, len(self.images), (batch,), generator=g)
        x, y = self.images[idx], self.labels[idx]
        if self.name in ("toy-digits-base", "toy-digits-dit-v"):
            return data.augment(x, g), {}
        if self.name == "toy-digits-class":
            drop = torch.rand(batch, generator=g) < DROPOUT
            return data.augment(x, g), {"class_labels": torch.where(drop, models.CLASS_NULL, y)}
        if self.name == "toy-digits-view":
            dx = torch.randint(-VIEW_SOURCE_SHIFT, VIEW_SOURCE_SHIFT + 1, (batch,), generator=g).float()
            dy = torch.randint(-VIEW_SOURCE_SHIFT, VIEW_SOURCE_SHIFT + 1, (batch,), generator=g).float()
            source = data.shift(x, dx, dy)
            lo, hi = data.VIEW_ANGLES
            angle = lo + (hi - lo) * torch.rand(batch, generator=g)
            target = data.rotate(source, angle)
            drop = torch.rand(batch, generator=g) < DROPOUT  # image and pose dropped together
            image = torch.where(drop.view(-1, 1, 1, 1), torch.zeros_like(source), source)
            value = torch.where(drop, models.ANGLE_NULL, models.angle_value(angle))
            return target, {"image": image, "class_labels": value}
        if self.name == "toy-digits-edit":
            rot = (torch.rand(batch, generator=g) * 2 - 1) * EDIT_SOURCE_ROTATION
            source = data.rotate(x, rot)
            instr = torch.randint(0, len(data.INSTRUCTIONS), (batch,), generator=g)
            target = data.apply_instruction(source, instr)
            r = torch.rand(batch, generator=g)  # InstructPix2Pix: 5 % no text, 5 % no image, 5 % neither
            drop_text = (r < EDIT_DROPOUT) | ((r >= 2 * EDIT_DROPOUT) & (r < 3 * EDIT_DROPOUT))
            drop_image = (r >= EDIT_DROPOUT) & (r < 3 * EDIT_DROPOUT)
            image = torch.where(drop_image.view(-1, 1, 1, 1), torch.zeros_like(source), source)
            return target, {"image": image, "class_labels": torch.where(drop_text, models.EDIT_NULL, instr)}
        raise ValueError(self.name)


def _network(name: str, out_dir: Path):
    """A fresh network for a prior; for a fine-tune, the base UNet from `out_dir` extended."""
    if name == "toy-digits-base":
        return models.base_unet(), models.LINEAR_EPS, models.call_unet
    if name == "toy-digits-dit-v":
        return models.dit(), models.COSINE_V, models.call_dit
    from diffusers import UNet2DModel

    base_folder = Path(out_dir) / "toy-digits-base"
    if not (base_folder / "unet").is_dir():
        raise PriorswapError(f"{name} is fine-tuned from toy-digits-base, which is not in {out_dir}: train it first")
    base = UNet2DModel.from_pretrained(base_folder, subfolder="unet", torch_dtype=torch.float32)
    if name == "toy-digits-class":
        net = models.finetune_unet(base, 0, num_class_embeds=models.NUM_CLASSES + 1)
    elif name == "toy-digits-view":
        net = models.finetune_unet(base, 1, class_embed_type="timestep")
    else:
        net = models.finetune_unet(base, 1, num_class_embeds=len(data.INSTRUCTIONS) + 1)
    return net, models.LINEAR_EPS, models.call_unet


def train_model(name: str, out_dir: Path, scale: float = 1.0, progress: bool = True, seed: int = 0) -> dict:
    """Trains one diffusion model of the zoo and saves its EMA weights in `out_dir/name`."""
    from diffusers import __version__ as diffusers_version
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    recipe = RECIPES[name]
    steps = max(1, round(recipe.steps * scale))
    s = _seed_for(name, seed)
    torch.manual_seed(s)
    g = torch.Generator().manual_seed(s)
    net, sched_config, call = _network(name, out_dir)
    net.train()
    scheduler = models.scheduler(sched_config)
    batches = Batches(name, seed)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=0.0)
    lr_sched = get_cosine_schedule_with_warmup(opt, min(recipe.warmup, steps // 10), steps)
    ema = EMAModel(net.parameters(), decay=recipe.ema_decay)
    T = scheduler.config.num_train_timesteps
    v_pred = sched_config["prediction_type"] == "v_prediction"
    losses: list[float] = []
    start = time.time()
    with progress_bar(progress) as bar:
        task = bar.add_task(name, total=steps)
        for step in range(steps):
            x0, cond = batches(recipe.batch_size, g)
            noise = torch.randn(x0.shape, generator=g)
            t = torch.randint(0, T, (x0.shape[0],), generator=g)
            xt = scheduler.add_noise(x0, noise, t)
            target = scheduler.get_velocity(x0, noise, t) if v_pred else noise
            loss = F.mse_loss(call(net, xt, t, cond), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            lr_sched.step()
            ema.step(net.parameters())
            losses.append(loss.item())
            bar.update(task, advance=1, description=f"{name} loss {_tail(losses, 100):.4f}")
            if progress and not bar.console.is_terminal and (step + 1) % max(1, steps // 20) == 0:
                bar.console.log(f"{name} step {step + 1}/{steps} loss {_tail(losses, 100):.4f} "
                                f"{time.time() - start:.0f}s")
    seconds = time.time() - start
    ema.copy_to(net.parameters())
    net.eval()
    stats = {
        "steps": steps,
        "batch_size": recipe.batch_size,
        "seconds": round(seconds, 1),
        "final_loss": round(_tail(losses, max(1, steps // 10)), 5),
        "parameters": sum(p.numel() for p in net.parameters()),
        "recipe": asdict(recipe),
        "seed": seed,
    }
    save(name, net, sched_config, Path(out_dir), stats, diffusers_version)
    return stats


def save(name: str, net, sched_config: dict, out_dir: Path, stats: dict, diffusers_version: str) -> Path:
    """The diffusers-style folder of one zoo model (fp16 safetensors)."""
    folder = out_dir / name
    component = "transformer" if name == "toy-digits-dit-v" else "unet"
    folder.mkdir(parents=True, exist_ok=True)
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # the fp16 cast of a plain model is intended here
    try:
        net.to(torch.float16).save_pretrained(folder / component, safe_serialization=True)
        net.to(torch.float32)
    finally:
        diffusers_logging.set_verbosity(level)
    models.scheduler(sched_config).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": PIPELINE_CLASS,
        "_diffusers_version": diffusers_version,
        component: ["diffusers", type(net).__name__],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "task": TASKS.get(name),
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=1) + "\n")
    (folder / "training.json").write_text(json.dumps(stats, indent=1) + "\n")
    return folder


def _tail(losses: list[float], n: int) -> float:
    tail = losses[-n:]
    return sum(tail) / max(1, len(tail))


def train_zoo(
    only: list[str] | None = None,
    out_dir: Path | None = None,
    scale: float = 1.0,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, dict]:
    """Trains the zoo (or the ids in `only`, in zoo order) into `out_dir` (default: the package's
    weights); `scale` multiplies every step count. Returns per-model stats."""
    out_dir = Path(out_dir) if out_dir is not None else weights_dir()
    unknown = [m for m in (only or []) if m not in ZOO]
    if unknown:
        raise ValueError(f"unknown zoo id(s) {', '.join(unknown)}; choose from {', '.join(ZOO)}")
    base = "toy-digits-base"
    fine_tunes = [m for m in (only or []) if m not in (base, "toy-digits-dit-v", CLASSIFIER_ID)]
    if fine_tunes and base not in only and not (out_dir / base / "unet").is_dir():
        raise PriorswapError(f"{', '.join(fine_tunes)} fine-tune(s) {base}, which is not in {out_dir}: add "
                             f"--only {base} (it trains first) or train it into that folder before")
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = {}
    for name in ZOO:
        if only and name not in only:
            continue
        if name == CLASSIFIER_ID:
            r = RECIPES[name]
            stats[name] = train_classifier(out_dir, steps=max(1, round(r.steps * scale)), batch_size=r.batch_size,
                                           lr=r.lr, seed=_seed_for(name, seed), progress=progress)
        else:
            stats[name] = train_model(name, out_dir, scale=scale, progress=progress, seed=seed)
    return stats


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train the toy digits zoo.")
    parser.add_argument("--only", nargs="*", choices=ZOO, help="train only these ids (zoo order)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package weights)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stats = train_zoo(args.only, args.out, args.scale, not args.no_progress, args.seed)
    for name, s in stats.items():
        print(name, json.dumps(s), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
