"""The toy data: scikit-learn's `load_digits` (8×8, ships offline) on a 16×16 canvas, and the exact
transforms the view and edit tasks learn.

Each 8×8 digit is upsampled bilinearly to 12×12 and centred on a 16×16 canvas (a 2-pixel border,
so that shifted and rotated digits stay on the canvas). Pixels are in [-1, 1], background -1.

Geometry (all transforms are exact affine resamplings with `affine_grid`/`grid_sample`,
bilinear, background filled with -1):

- `rotate(x, a)`: rotation by `a` degrees about the canvas centre, counter-clockwise as displayed
  (row 0 at the top). Multiples of 90° map pixel centres onto pixel centres (exact).
- `shift(x, dx, dy)`: translation by (dx, dy) pixels, +dx to the right, +dy down. Integer shifts
  are exact.
- `augment`: with probability 1/2 a rotation by U(-45°, 45°) (else none), then an integer shift of
  {-2, …, 2} pixels along each axis. This is the base models' training distribution; it covers
  the outputs of the view task (sources rotated by up to ±40°) and of the edit task.
- `INSTRUCTIONS` (edit task): "keep" = identity; "shift" = `shift(x, +2, 0)` (2 pixels to the
  right); "rotate" = `rotate(x, +30°)` (counter-clockwise).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

SIZE = 16
DIGIT_SIZE = 12
ROTATION_AUG = 45.0  # degrees, applied to half of the augmented samples
SHIFT_AUG = 2  # pixels, integer, each axis
VIEW_ANGLES = (-40.0, 40.0)  # the view model trains on angles drawn uniformly from this range (degrees)
VIEW_ANGLES_EVAL = (-40.0, -20.0, 0.0, 20.0, 40.0)  # the angles the evaluation and the demo use
INSTRUCTIONS = ("keep", "shift", "rotate")
SHIFT_PIXELS = 2.0  # the "shift" instruction: this many pixels to the right
ROTATE_DEGREES = 30.0  # the "rotate" instruction: this many degrees counter-clockwise
TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    pad = (SIZE - DIGIT_SIZE) // 2
    x = F.pad(x, (pad, pad, pad, pad))
    return x * 2 - 1, torch.tensor(digits.target, dtype=torch.long)


@lru_cache(maxsize=4)
def _split_indices(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    from sklearn.model_selection import train_test_split

    _, labels = _all_digits()
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=TEST_FRACTION, random_state=seed, stratify=labels.numpy())
    return torch.tensor(np.sort(train)), torch.tensor(np.sort(test))


def load_digits16(split: str = "all", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits (N, 1, 16, 16) in [-1, 1] and labels (N,): "all", or a deterministic stratified 80/20
    "train"/"test" split (fixed by `seed`)."""
    images, labels = _all_digits()
    if split == "all":
        return images.clone(), labels.clone()
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    idx = _split_indices(seed)[0 if split == "train" else 1]
    return images[idx].clone(), labels[idx].clone()


def _resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Output pixel p samples the input at theta·p (normalised coordinates); background stays -1."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out - 1


def _theta(angles_deg: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse map of "rotate counter-clockwise by the angle, then shift by (dx, dy) pixels"."""
    a = angles_deg.double() * (math.pi / 180)
    c, s = torch.cos(a), torch.sin(a)
    tx, ty = dx.double() * 2 / size, dy.double() * 2 / size
    # forward (image coordinates, y down): p' = R p + d with R = [[c, s], [-s, c]]; inverse: Rᵀ (p' − d)
    row0 = torch.stack([c, -s, -(c * tx - s * ty)], dim=-1)
    row1 = torch.stack([s, c, -(s * tx + c * ty)], dim=-1)
    return torch.stack([row0, row1], dim=1).float()


def rotate(x: torch.Tensor, angles_deg: torch.Tensor | float) -> torch.Tensor:
    """Rotates each image by its angle (degrees, counter-clockwise as displayed) about the centre."""
    n = x.shape[0]
    angles = torch.as_tensor(angles_deg, dtype=torch.float32).reshape(-1).expand(n)
    zero = torch.zeros(n)
    return _resample(x, _theta(angles, zero, zero, x.shape[-1]))


def shift(x: torch.Tensor, dx: torch.Tensor | float, dy: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Translates each image by (dx, dy) pixels (+dx right, +dy down)."""
    n = x.shape[0]
    dx = torch.as_tensor(dx, dtype=torch.float32).reshape(-1).expand(n)
    dy = torch.as_tensor(dy, dtype=torch.float32).reshape(-1).expand(n)
    return _resample(x, _theta(torch.zeros(n), dx, dy, x.shape[-1]))


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The base training distribution: half the images rotated by U(-45°, 45°), then every image
    shifted by an integer number of pixels in {-2, …, 2} along each axis (see the module doc)."""
    n = x.shape[0]
    angles = (torch.rand(n, generator=generator) * 2 - 1) * ROTATION_AUG
    angles = angles * (torch.rand(n, generator=generator) < 0.5)
    dx = torch.randint(-SHIFT_AUG, SHIFT_AUG + 1, (n,), generator=generator).float()
    dy = torch.randint(-SHIFT_AUG, SHIFT_AUG + 1, (n,), generator=generator).float()
    return _resample(x, _theta(angles, dx, dy, x.shape[-1]))


def instruction_id(name: str) -> int:
    if name not in INSTRUCTIONS:
        raise ValueError(f"unknown instruction {name!r}; choose one of {', '.join(INSTRUCTIONS)}")
    return INSTRUCTIONS.index(name)


def apply_instruction(x: torch.Tensor, instruction: torch.Tensor | int) -> torch.Tensor:
    """The exact edit for each image: 0 keep (identity), 1 shift (2 px right), 2 rotate (30° CCW)."""
    n = x.shape[0]
    ids = torch.as_tensor(instruction, dtype=torch.long).reshape(-1).expand(n)
    if bool(((ids < 0) | (ids >= len(INSTRUCTIONS))).any()):
        raise ValueError(f"instruction ids must be in [0, {len(INSTRUCTIONS) - 1}]")
    angles = torch.where(ids == 2, ROTATE_DEGREES, 0.0)
    dx = torch.where(ids == 1, SHIFT_PIXELS, 0.0)
    out = _resample(x, _theta(angles, dx, torch.zeros(n), x.shape[-1]))
    keep = (ids == 0).view(-1, *[1] * (x.ndim - 1))
    return torch.where(keep, x, out)
