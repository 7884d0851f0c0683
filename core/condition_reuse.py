"""Reuse, across the steps of one sampling run, what a network computes from its condition alone.

A denoiser's condition (a prompt's text states, an image embedding, a prior's null condition) is the
same at every step of a run, and so is everything a network computes from it alone: the key and value
projections of every cross-attention, PixArt's caption projection (`bench/condition_reuse.py` measures
what recomputing them costs). `reusing(modules)` marks such modules: within the `with` block each one
remembers its last inputs and outputs and, called again with an *equal* input (same shape, dtype,
device and values), returns the stored output instead of recomputing it. An input whose rows are one
row broadcast (`expand`, stride 0, as a batch-1 null condition is when several samples share it) is
projected once and broadcast back. Outside the block the modules run as usual and nothing is stored.

Equality is checked on values, not identity, so a reused output is exactly what the module would have
returned for that input (for a broadcast input, for its one row); a module whose input changes between
calls just computes again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

from .wrapped_forward import wrap_forward

MEMO_SIZE = 2
"""Input/output pairs each module keeps: two, so a network called alternately with two conditions in one
step (a model serving as its own prior) still reuses both."""

_MEMOS = "_priorswap_memos"
_INSTALLED = "_priorswap_reuse_forward"  # the forward it had, once installed
_active: ContextVar[frozenset[int] | None] = ContextVar("priorswap_condition_reuse", default=None)


@dataclass
class _Memo:
    key: torch.Tensor
    version: int | None  # the key's version counter when stored (None: an inference tensor, stored as a copy)
    out: torch.Tensor


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


def _holds(memo: _Memo, x: torch.Tensor) -> bool:
    key = memo.key
    if key.shape != x.shape or key.dtype != x.dtype or key.device != x.device:
        return False
    if memo.version is not None and _version(key) != memo.version:
        return False  # the stored input was modified in place since: its old output is stale
    if x is key or (x.data_ptr() == key.data_ptr() and x.stride() == key.stride()):
        return True  # the same memory, unmodified (the key is held, so its memory was not reused)
    return bool(torch.equal(x, key))


def _reusing_forward(self: torch.nn.Module, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    scope = _active.get()
    if scope is None or id(self) not in scope or kwargs or len(args) != 1 or torch.is_grad_enabled():
        return original(*args, **kwargs)
    x = args[0]
    if not torch.is_tensor(x):
        return original(x)
    batch = None
    if x.ndim >= 2 and x.shape[0] > 1 and x.stride(0) == 0:  # every row is the same row
        batch, x = x.shape[0], x[:1]
    memos: list[_Memo] = self.__dict__.setdefault(_MEMOS, [])
    memo = next((m for m in memos if _holds(m, x)), None)
    if memo is None:
        version = _version(x)
        memo = _Memo(x if version is not None else x.clone(), version, original(x))
        memos.insert(0, memo)
        del memos[MEMO_SIZE:]
    return memo.out if batch is None else memo.out.expand(batch, *memo.out.shape[1:])


def install(module: torch.nn.Module) -> None:
    """Lets `module` reuse its outputs inside `reusing` (idempotent). Its forward must take one tensor and
    return one tensor. A forward already replaced on the instance (e.g. by accelerate's offload hooks) is
    kept and called."""
    wrap_forward(module, _reusing_forward, _INSTALLED)


def cross_attention_projections(net: torch.nn.Module | None) -> list[torch.nn.Module]:
    """The key and value projections of every diffusers cross-attention in `net` (none for no net): their
    input is the condition alone."""
    if net is None:
        return []
    found: list[torch.nn.Module] = []
    for module in net.modules():
        if getattr(module, "is_cross_attention", False) and getattr(module, "to_k", None) is not None:
            found += [m for m in (module.to_k, getattr(module, "to_v", None)) if isinstance(m, torch.nn.Module)]
    return found


@contextmanager
def reusing(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Within the block, `modules` return their stored output for an input equal to a recent one. Each
    module's forward must depend on its single tensor input only (and on weights that stay fixed during
    the block). What they stored is dropped on exit."""
    chosen = list(modules)
    for module in chosen:
        install(module)
    outer = _active.get() or frozenset()
    token = _active.set(outer | {id(m) for m in chosen})
    try:
        yield
    finally:
        _active.reset(token)
        for module in chosen:
            if id(module) not in outer:
                module.__dict__.pop(_MEMOS, None)
