"""On-disk cache of encoded null conditions, so a prior's text/image encoder loads at most once."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PriorswapError

if TYPE_CHECKING:
    import torch


class CacheWarning(UserWarning):
    """A cached null condition could not be read (it is rebuilt) or written (it is computed again next time)."""


def cache_home() -> Path:
    """priorswap's cache: $PRIORSWAP_CACHE, else $XDG_CACHE_HOME/priorswap (default ~/.cache/priorswap)."""
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("PRIORSWAP_CACHE") or xdg / "priorswap")


def _setting() -> str:
    """The setting that chose the cache folder, as the user would change it."""
    if os.environ.get("PRIORSWAP_CACHE"):
        return "PRIORSWAP_CACHE"
    return "XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else "the default cache folder"


def checked_home() -> Path:
    """`cache_home()`, refused with a PriorswapError naming the setting when it is a file or lies below one."""
    home = cache_home()
    for path in (home, *home.parents):
        if path.exists():
            if path.is_dir():
                return home
            where = "is a file" if path == home else f"lies below the file {path}"
            raise PriorswapError(f"the priorswap cache {home} ({_setting()}) {where}, not a folder: set "
                                 "PRIORSWAP_CACHE to a folder (it is created if missing)")
    return home


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


def _read(path: Path) -> torch.Tensor | None:
    """The cached tensor, or None (with a warning) when the file is damaged: it is rebuilt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)["null"]
    except (SafetensorError, OSError, KeyError) as e:
        reason = "it holds no 'null' tensor" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        warnings.warn(f"the cached null condition {path} is damaged ({reason}); rebuilding it", CacheWarning,
                      stacklevel=3)
        return None


def cached_null(folder: Path, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Returns the cached tensor for (folder, key), computing and storing it on a miss (or a damaged entry)."""
    from safetensors.torch import save_file

    from .media import write_atomic

    name = hashlib.sha256(f"{_fingerprint(folder)}|{key}".encode()).hexdigest()[:32]
    path = checked_home() / "null" / f"{name}.safetensors"
    if path.is_file():
        value = _read(path)
        if value is not None:
            return value
    value = compute()
    tensors = {"null": value.detach().cpu().contiguous()}
    try:
        write_atomic(path, lambda tmp: save_file(tensors, tmp))
    except OSError as e:  # a cache that cannot be written costs time, not the run
        warnings.warn(f"could not cache the null condition in {path.parent} ({e.strerror or e}); it is computed "
                      "again next time", CacheWarning, stacklevel=2)
    return value
