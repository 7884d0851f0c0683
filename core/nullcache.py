"""On-disk cache of encoded null conditions, so a prior's text/image encoder loads at most once."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def cache_home() -> Path:
    """priorswap's cache: $PRIORSWAP_CACHE, else $XDG_CACHE_HOME/priorswap (default ~/.cache/priorswap)."""
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("PRIORSWAP_CACHE") or xdg / "priorswap")


def cache_dir() -> Path:
    """Where encoded null conditions are kept."""
    return cache_home() / "null"


def _fingerprint(folder: Path) -> str:
    """Folder path plus size and mtime of every file: a changed encoder invalidates the entry."""
    parts = [str(folder.resolve())]
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".txt"):
            st = p.stat()
            parts.append(f"{p.relative_to(folder)}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def cached_null(folder: Path, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Returns the cached tensor for (folder, key), computing and storing it on a miss."""
    from safetensors.torch import load_file, save_file

    name = hashlib.sha256(f"{_fingerprint(folder)}|{key}".encode()).hexdigest()[:32]
    path = cache_dir() / f"{name}.safetensors"
    if path.is_file():
        return load_file(path)["null"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"null": value.detach().cpu().contiguous()}, tmp)
    tmp.replace(path)
    return value
