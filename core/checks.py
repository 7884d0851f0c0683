"""Up-front checks of command-line values: outputs that can be written, devices that exist, option ranges.

Each raises PriorswapError (exit code 2 on the CLI) before any weights load, so a bad value costs nothing."""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import PriorswapError


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be created in `folder` (tried: permissions alone mislead root and special file systems)."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".priorswap-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def writable_file(path: Path, option: str) -> None:
    """`path` can be written as a file: not a folder, and its nearest existing parent is a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise PriorswapError(f"{option} {path} is a folder; give a file name")
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise PriorswapError(f"{option} {path}: {parent} is a file, not a folder")
    if not _can_write_in(parent):
        raise PriorswapError(f"{option} {path}: cannot write in {parent}; choose another place")


def writable_folder(path: Path, option: str) -> None:
    """`path` is (or can be created as) a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PriorswapError(f"{option} {path} is a file, not a folder")
    parent = _nearest_existing(path)
    if not parent.is_dir():
        raise PriorswapError(f"{option} {path}: {parent} is a file, not a folder")
    if not _can_write_in(parent):
        raise PriorswapError(f"{option} {path}: cannot write in {parent}; choose another place")


def device(name: str | None, option: str = "--device", allow_meta: bool = False) -> str:
    """A torch device string that exists here (default: cuda when available, else cpu). `option` names the
    setting in errors, as a CLI option (`--device`) or a Python keyword (`device`); `meta` (no data: device-
    placement tests only) is refused unless `allow_meta`."""
    import torch

    def said(value: str) -> str:  # `--device cuda` on the CLI, `device='cuda'` in Python
        return f"{option} {value}" if option.startswith("-") else f"{option}={value!r}"

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    choices = "cpu, cuda, cuda:N or mps"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise PriorswapError(f"{said(str(name))} is not a device; use {choices}") from None
    name = str(name)
    if dev.type == "meta" and not allow_meta:
        raise PriorswapError(f"{said(name)}: meta holds no data and cannot sample; use {choices}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PriorswapError(f"{said(name)}: no CUDA device here (this torch build: {torch.__version__}); "
                             f"use {said('cpu')}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PriorswapError(f"{said(name)}: MPS is not available here; use {said('cpu')}")
    backend = getattr(torch, dev.type, None) if dev.type not in ("cpu", "meta", "mps") else None
    available = getattr(backend, "is_available", None)
    if dev.type not in ("cpu", "meta", "cuda", "mps") and not (callable(available) and available()):
        raise PriorswapError(f"{said(name)}: no {dev.type} device here; use {choices}")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and callable(count) and dev.index >= count():
        raise PriorswapError(f"{said(name)}: only {count()} {dev.type} device(s) here")
    return name


def finite(value: float | None, option: str) -> None:
    if value is not None and not math.isfinite(value):
        raise PriorswapError(f"{option} must be a finite number, got {value}")


def in_range(value: float | None, option: str, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise PriorswapError(f"{option} must be between {low:g} and {high:g}, got {value:g}")


def one_of(value: str, option: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PriorswapError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


MAX_SEED = 2**63 - 1


def seed(value: int, option: str) -> None:
    """A seed torch.Generator.manual_seed takes and the run record keeps: 0 to 2**63 − 1."""
    if not 0 <= value <= MAX_SEED:
        raise PriorswapError(f"{option} must be from 0 to 2**63 − 1 ({MAX_SEED}), got {value}")


def steps(value: int | None, maximum: int) -> None:
    """Sampling steps within the model's training timesteps (`maximum`)."""
    if value is not None and not 1 <= value <= maximum:
        raise PriorswapError(f"--steps must be from 1 to {maximum} (the model's training timesteps), got {value}")


def image_guidance(value: float | None, task: type) -> None:
    """--image-guidance only for a task with two conditions (dual guidance: its levels include "partial")."""
    if value is not None and "partial" not in task.levels:
        raise PriorswapError(f"--image-guidance applies to dual guidance only; task '{task.name}' has one "
                             "condition, whose scale is --guidance")
