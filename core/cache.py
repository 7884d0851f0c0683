"""What priorswap keeps in its cache ($PRIORSWAP_CACHE, default ~/.cache/priorswap), and clearing it.

Kinds: `converted` (released checkpoints converted once into per-component safetensors folders),
`pickles` (safetensors copies of opted-in pickled components), `null` (encoded null conditions of
priors), `checkpoints` (what a local checkpoint file was recognised as). Everything can be rebuilt:
clearing only costs time (and, for pickled sources, the --allow-pickle opt-in once more).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .conversion import DONE
from .errors import PriorswapError
from .nullcache import cache_home

KINDS = ("converted", "pickles", "null", "checkpoints")


@dataclass
class CacheItem:
    """One cached thing: its kind, what it holds, where, and its size on disk."""

    kind: str
    what: str
    path: Path
    bytes: int


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _kind_root(kind: str) -> Path:
    root = cache_home()
    return {"converted": root / "converted", "pickles": root / "converted" / "pickles",
            "null": root / "null", "checkpoints": root / "checkpoints"}[kind]


def items() -> list[CacheItem]:
    """Every cached item, converted folders one by one (described by their source), the rest per kind."""
    found = []
    converted = _kind_root("converted")
    for done in sorted(converted.rglob(DONE)) if converted.is_dir() else []:
        folder = done.parent
        try:
            info = json.loads(done.read_text())
            source = info.get("source", {})
            where = source.get("repo") or source.get("path") or "?"
            what = f"{where}:{source.get('file', '?')} → {info.get('family')} {info.get('variant') or ''}".strip()
        except (OSError, ValueError):
            what = folder.name
        found.append(CacheItem("converted", what, folder, _size(folder)))
    for kind, what in (("pickles", "safetensors copies of pickled components"),
                       ("null", "encoded null conditions"), ("checkpoints", "recognised checkpoint files")):
        root = _kind_root(kind)
        files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
        if files:
            found.append(CacheItem(kind, f"{what} ({len(files)} files)", root, _size(root)))
    return found


def clear(kinds: list[str]) -> list[CacheItem]:
    """Deletes the cached items of `kinds` (`all` = every kind); returns what was deleted."""
    unknown = [k for k in kinds if k not in (*KINDS, "all")]
    if unknown:
        raise PriorswapError(f"unknown cache kind {', '.join(unknown)}: use {', '.join(KINDS)} or all")
    wanted = set(KINDS) if "all" in kinds else set(kinds)
    gone = [item for item in items() if item.kind in wanted]
    for item in gone:
        shutil.rmtree(item.path, ignore_errors=True)
    if "converted" in wanted:  # unfinished conversions (a crash mid-way) leave temporary folders
        for tmp in _kind_root("converted").rglob("*.tmp-*") if _kind_root("converted").is_dir() else []:
            shutil.rmtree(tmp, ignore_errors=True)
    return gone
