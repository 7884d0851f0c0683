"""Replacing a module's `forward` on the instance, keeping the one it had in the chain."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def wrap_forward(module: torch.nn.Module, wrapper: Callable[..., Any], key: str) -> None:
    """Makes `module(...)` call `wrapper(module, original, *args, **kwargs)`, where `original` is the forward
    the module had: its class's, or one already set on the instance (e.g. by accelerate's offload hooks), which
    stays in the chain. Idempotent per `key` (the attribute that marks the module as wrapped)."""
    if key in module.__dict__:
        return
    original = module.forward
    module.__dict__[key] = original
    module.forward = functools.partial(wrapper, module, original)
