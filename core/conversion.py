"""Single-checkpoint sources: a released checkpoint converted once into a per-component folder in the cache.

An entry whose source names a `file` (e.g. a Lightning `model.ckpt`) is converted by its family's
`convert` callable the first time it is loaded; later runs, and the prior role, read only the
sub-folders they need from the converted folder and never touch the checkpoint again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .errors import PriorswapError, WeightsUnavailable
from .family import Family, resolve_ref
from .hub import PICKLE_SUFFIXES, fetch_file
from .nullcache import checked_home
from .registry import ModelEntry

DONE = "priorswap-converted.json"


def cache_root() -> Path:
    """Where converted folders live: $PRIORSWAP_CACHE/converted (default ~/.cache/priorswap/converted)."""
    return checked_home() / "converted"


def converted_path(entry: ModelEntry, family: Family) -> Path:
    """The cache folder for this checkpoint: keyed by the file's pinned sha256, by repo + pinned commit (hub),
    or by the file's path, size and mtime (local), and by the family and variant that convert it."""
    src = entry.source
    if src.sha256 is not None:
        where = f"sha256/{src.sha256}"
    elif src.repo is not None:
        where = f"{src.repo.replace('/', '--')}/{src.revision}"
    else:
        path = Path(src.path or ".") / src.file
        stat = path.stat() if path.exists() else None
        key = f"{path.resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"
        where = f"local/{hashlib.sha256(key.encode()).hexdigest()[:24]}"
    if src.extra_files:  # the same checkpoint with other extra files converts to another folder
        extras = "\n".join(e.describe() for e in src.extra_files)
        where += f"+{hashlib.sha256(extras.encode()).hexdigest()[:16]}"
    return cache_root() / where / f"{src.file}.{family.name}.{entry.variant or 'default'}"


def converted_folder(
    entry: ModelEntry, family: Family, *, offline: bool | None = None, allow_pickle: bool = False, log: Any = None
) -> Path:
    """The converted folder of a single-checkpoint entry, converting it first if the cache lacks it.

    The checkpoint is fetched only on a cache miss; pickled checkpoints need `allow_pickle` (they are then
    read with torch.load(weights_only=True) by the converter). The folder appears atomically: a conversion
    that fails or is interrupted leaves nothing behind."""
    out = converted_path(entry, family)
    if (out / DONE).is_file():
        return out
    if family.convert is None:
        raise PriorswapError(
            f"the {family.name} plugin cannot convert single checkpoints, but the entry's source names the file "
            f"{entry.source.file}; point the source at a folder instead"
        )
    for src in (entry.source, *entry.source.extra_files):
        if Path(src.file).suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise WeightsUnavailable(
                f"{src.describe(extras=False)} is a pickled checkpoint; loading it can run code from the file. Opt "
                "in with --allow-pickle (allow_pickle=True): it is read once with torch.load(weights_only=True) and "
                f"converted to safetensors in {cache_root()}, and later runs read only the converted folder."
            )
    say = log or (lambda msg: print(msg, file=sys.stderr))
    checkpoint = fetch_file(entry.source, offline=offline, log=say)
    extras = [fetch_file(src, offline=offline, log=say) for src in entry.source.extra_files]
    say(f"converting {entry.source.describe()} once into {out} (later runs read this folder)")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        more = {"extra_files": extras} if extras else {}  # hooks without extra files need not take the argument
        resolve_ref(family.convert)(checkpoint, entry, tmp, allow_pickle=allow_pickle, offline=offline, **more)
        (tmp / DONE).write_text(json.dumps({"source": entry.source.model_dump(mode="json", exclude_defaults=True),
                                            "family": family.name, "variant": entry.variant}, indent=1))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
