"""Dtype names as the command line takes them (fp32 / fp16 / bf16)."""

from __future__ import annotations

from typing import Any

from .errors import PriorswapError

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}


def parse_dtype(name: str, option: str) -> Any:
    """The torch dtype called `name`; a PriorswapError naming `option` for anything else."""
    import torch

    if name.lower() not in DTYPES:
        raise PriorswapError(f"{option} takes fp32, fp16 or bf16, got '{name}'")
    return getattr(torch, DTYPES[name.lower()])
