"""Conditions are dicts of batch-first tensors handed to a denoiser's network."""

from __future__ import annotations

import torch

Condition = dict[str, torch.Tensor]


def expand(cond: Condition, batch: int) -> Condition:
    """Broadcasts size-1 batch entries to `batch` rows; other sizes must already match."""
    out: Condition = {}
    for key, value in cond.items():
        n = value.shape[0]
        if n == batch:
            out[key] = value
        elif n == 1:
            out[key] = value.expand(batch, *value.shape[1:])
        else:
            raise ValueError(f"condition {key!r} has batch {n}, expected 1 or {batch}")
    return out


def concat(conds: list[Condition]) -> Condition:
    """Concatenates conditions for one batched forward; all must have the same keys."""
    keys = set(conds[0])
    for c in conds[1:]:
        if set(c) != keys:
            raise ValueError(f"cannot batch conditions with different keys: {sorted(keys)} vs {sorted(c)}")
    return {k: torch.cat([c[k] for c in conds], dim=0) for k in conds[0]}


def repeat(cond: Condition, times: int) -> Condition:
    """Repeats every entry `times` along the batch (frame-by-frame priors)."""
    return {k: v.repeat_interleave(times, dim=0) for k, v in cond.items()}
