"""What a plugin registers for a model family: how to load its denoiser and recognise its folders."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PluginError

if TYPE_CHECKING:
    from .latents import LatentSpace
    from .registry import ModelEntry


def resolve_ref(ref: Any) -> Any:
    """A callable, or a lazy "package.module:attr" string imported on first use. A string that does not
    resolve raises PluginError naming it (`priorswap doctor` checks every registered one)."""
    if not isinstance(ref, str):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise PluginError(f"the plugin reference {ref!r} is not of the form 'package.module:attr'; "
                          "fix it in the plugin that registers it")
    try:
        value = importlib.import_module(module)
    except ImportError as e:
        raise PluginError(f"the plugin reference {ref!r} does not resolve: importing {module} failed "
                          f"({type(e).__name__}: {e}); fix the plugin or install what it needs") from None
    for part in attr.split("."):
        if not hasattr(value, part):
            raise PluginError(f"the plugin reference {ref!r} does not resolve: {module} has no attribute "
                              f"{attr!r}; fix the string in the plugin that registers it")
        value = getattr(value, part)
    return value


@dataclass
class LoadRequest:
    """Everything a family's loader gets: the folder, the entry, the role and the user's options."""

    folder: Path
    entry: ModelEntry
    role: str
    latent_space: LatentSpace
    allow_pickle: bool = False
    dtype: Any = None
    device: str = "cpu"
    offline: bool | None = None  # for a plugin's own later fetches (e.g. a text encoder on a cache miss)


@dataclass
class Family:
    """A model family. `load` builds a Denoiser from a LoadRequest; `describe` turns a local folder
    into registry-entry fields; `pipeline_classes` are the diffusers `model_index.json` class names
    that identify the family's folders. `convert(checkpoint, entry, out, allow_pickle=..., offline=...)`
    turns a single released checkpoint (an entry whose source names a `file`) into a loadable folder
    `out`; the core runs it once and keeps the result in its cache (an entry with `extra_files` also
    passes their fetched paths as `extra_files=[...]`). `describe_checkpoint(keys)` gives,
    from a checkpoint file's tensor names, the registry-entry fields (with `variant`) of each preset the
    file can be — several when the names cannot tell them apart — so that a local file can be passed
    where a registry id goes (`--model path/model.ckpt`). Callables may be lazy
    "module:attr" strings, so that registering a plugin imports neither torch nor diffusers."""

    name: str
    load: Callable[[LoadRequest], Any] | str
    describe: Callable[[Path], dict] | str | None = None
    pipeline_classes: tuple[str, ...] = ()
    default_task: str | None = None
    folders: dict[str, list[str]] = field(default_factory=dict)
    on_demand: dict[str, list[str]] = field(default_factory=dict)
    """Per role, the folders fetched later only when needed (a prior's text encoder, until its null
    condition is cached): an offline "not in the cache" message names them too, so that one download
    covers the first run."""
    convert: Callable[..., Any] | str | None = None
    describe_checkpoint: Callable[[set[str]], list[dict]] | str | None = None
