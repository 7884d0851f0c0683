"""Local checkpoint files where a registry id goes: `--model path/model.ckpt` or `path/model.ckpt#variant`.

Families that convert single checkpoints say, from the file's tensor names, which of their presets the
file can be (`Family.describe_checkpoint`). The answer is kept in priorswap's cache (keyed by the file's
path, size and modification time), so that after the first, opted-in run a pickled file is not opened
again: the converted folder is found from the cached description.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import PriorswapError, WeightsUnavailable
from .family import resolve_ref
from .hub import PICKLE_SUFFIXES, load_pickle, unreadable
from .nullcache import checked_home
from .plugin_manager import Plugins
from .registry import ModelEntry, Source

SUFFIXES = (*PICKLE_SUFFIXES, ".safetensors")


def split_ref(ref: str) -> tuple[Path, str | None] | None:
    """(file, variant) when `ref` names an existing checkpoint file, optionally followed by `#variant`."""
    path, _, variant = ref.partition("#")
    file = Path(path).expanduser()
    if file.suffix not in SUFFIXES:
        return None
    if not file.is_file():
        raise WeightsUnavailable(f"checkpoint file {file} does not exist")
    return file, variant or None


def checkpoint_keys(path: Path, *, allow_pickle: bool = False) -> set[str]:
    """The tensor names of a checkpoint file (a Lightning `state_dict` container is unwrapped).

    safetensors headers are read directly; pickles only with `allow_pickle`, and then with
    torch.load(weights_only=True, mmap=True), which maps the tensors without reading them."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return set(handle.keys())
        except (SafetensorError, OSError) as e:
            raise PriorswapError(f"{path} is not a readable safetensors file ({e}); download it again") from None
    if not allow_pickle:
        raise WeightsUnavailable(
            f"{path} is a pickled checkpoint; reading it can run code from the file. Opt in with --allow-pickle "
            "(allow_pickle=True): it is read with torch.load(weights_only=True), converted once to safetensors "
            "in priorswap's cache, and later runs use the converted copy without the flag."
        )
    import pickle

    try:
        data: Any = load_pickle(path, mmap=True)  # maps the tensors without reading them
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise unreadable(path, e) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise PriorswapError(f"{path} does not hold a state dict (found {type(data).__name__})")
    return {str(k) for k in data}


def _cache_file(path: Path) -> Path:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return checked_home() / "checkpoints" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def candidates(path: Path, plugins: Plugins, *, allow_pickle: bool = False) -> list[dict]:
    """[{"plugin": family, **entry fields}] for every preset of every family that recognises the file."""
    cached = _cache_file(path)
    if cached.is_file():
        return json.loads(cached.read_text())
    keys = checkpoint_keys(path, allow_pickle=allow_pickle)
    found = []
    for family in plugins.families.values():
        if family.describe_checkpoint is not None:
            found += [{"plugin": family.name, **fields} for fields in resolve_ref(family.describe_checkpoint)(keys)]
    if found:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps(found, indent=1))
        tmp.replace(cached)
    else:
        prefixes = sorted({k.split(".")[0] for k in keys})[:8]
        raise PriorswapError(
            f"no installed plugin recognises the checkpoint {path} (its tensors start with: "
            f"{', '.join(prefixes) or 'nothing'}).{plugins.hint()}"
        )
    return found


def checkpoint_entry(path: Path, variant: str | None, plugins: Plugins, *, allow_pickle: bool = False) -> ModelEntry:
    """The registry entry of a local checkpoint file: the one preset it can be, or the `variant` named."""
    found = candidates(path, plugins, allow_pickle=allow_pickle)
    names = [c["variant"] for c in found]
    if variant is not None:
        found = [c for c in found if c["variant"] == variant]
        if not found:
            raise PriorswapError(f"{path} cannot be '{variant}'; by its tensors it is one of: {', '.join(names)}")
    if len(found) > 1:
        raise PriorswapError(
            f"{path} could be any of {', '.join(names)} (their tensors have the same names); name one after "
            f"a '#', e.g. {path}#{names[0]}"
        )
    fields = dict(found[0])
    return ModelEntry(source=Source(path=str(path.resolve().parent), file=path.name), **fields)
