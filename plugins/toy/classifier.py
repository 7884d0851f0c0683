"""The metric network of the toy zoo: a small CNN digit classifier whose penultimate features
define the Fréchet distance (the toy stand-in for Inception features)."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from priorswap.configs import read_json

from . import data

CLASSIFIER_ID = "toy-digits-classifier"
CONFIG = {"channels": (32, 64, 128), "features": 128, "num_classes": 10}


class DigitClassifier(nn.Module):
    """16×16 → conv 32 → conv 64 (/2) → conv 128 (/2) → global mean → 128 features → 10 logits."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128), features: int = 128, num_classes: int = 10):
        super().__init__()
        c1, c2, c3 = channels
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.GroupNorm(8, c2), nn.SiLU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.GroupNorm(8, c3), nn.SiLU(),
        )
        self.fc = nn.Linear(c3, features)
        self.head = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, 128) of images (N, 1, 16, 16) in [-1, 1]."""
        h = self.convs(x.float()).mean(dim=(2, 3))
        return F.silu(self.fc(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def weights_dir() -> Path:
    return Path(str(resources.files("priorswap.plugins.toy") / "weights"))


def load_classifier(folder: Path | None = None) -> DigitClassifier:
    """The shipped classifier (or one saved by `train_classifier` in `folder`), in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else weights_dir() / CLASSIFIER_ID
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"no classifier weights at {weights}; train them with `priorswap toy train`")
    config = read_json(folder / "config.json")
    model = DigitClassifier(tuple(config["channels"]), config["features"], config["num_classes"])
    model.load_state_dict({k: v.float() for k, v in load_file(weights).items()})
    return model.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(b).argmax(1) for b in images.split(500)])
    return float((pred == labels).float().mean())


def train_classifier(
    out_dir: Path | None = None,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Trains on augmented training digits (the base models' distribution), saves
    `model.safetensors` + `config.json` in `out_dir/toy-digits-classifier`; returns its stats."""
    from safetensors.torch import save_file

    from .train import progress_bar

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    images, labels = data.load_digits16("train")
    model = DigitClassifier(**CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    losses = []
    start = time.time()
    with progress_bar(progress) as bar:
        task = bar.add_task(CLASSIFIER_ID, total=steps)
        for _ in range(steps):
            idx = torch.randint(0, len(images), (batch_size,), generator=g)
            x = data.augment(images[idx], g)
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(task, advance=1, description=f"{CLASSIFIER_ID} loss {loss:.3f}")
    seconds = time.time() - start
    model.eval()
    test_x, test_y = data.load_digits16("test")
    stats = {
        "steps": steps,
        "batch_size": batch_size,
        "seconds": round(seconds, 1),
        "final_loss": _tail_mean(losses),
        "test_accuracy": accuracy(model, test_x, test_y),
    }
    folder = Path(out_dir if out_dir is not None else weights_dir()) / CLASSIFIER_ID
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**CONFIG, "class": "DigitClassifier"}, indent=1) + "\n")
    (folder / "training.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def _tail_mean(losses: list[float]) -> float:
    if not losses:
        return float("nan")
    tail = losses[-max(1, len(losses) // 10):]
    return round(sum(tail) / len(tail), 5)
