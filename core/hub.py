"""Fetching weights with huggingface_hub and loading diffusers components safely.

Only the sub-folders a role needs are downloaded; revisions are pinned commits; safetensors are
preferred and pickles load only with an explicit opt-in, through torch.load(weights_only=True).
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import WeightsUnavailable
from .registry import Source

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
SKIP_VARIANTS = ["*.fp16.*", "*.fp16-*", "*.non_ema.*", "*.ema.*", "*.onnx", "*.msgpack", "*.h5", "*.ot"]


def patterns(folders: list[str] | None, allow_pickle: bool) -> list[str] | None:
    """allow_patterns for snapshot_download: configs, tokenizer files and safetensors of `folders`."""
    if not folders:
        return None
    exts = ["json", "txt", "model", "safetensors"] + (["bin"] if allow_pickle else [])
    return ["model_index.json"] + [f"{f}/*.{e}" for f in folders for e in exts]


def is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def retry_hint(local_only: bool) -> str:
    """How to get past a cache miss besides downloading: turn off what made this run offline (HF_HUB_OFFLINE,
    or --offline / offline=True), or, online, reach the hub."""
    if not local_only:
        return "or check that this machine can reach the hub (network, proxy, HF_ENDPOINT)"
    if is_offline(None):
        return "or unset HF_HUB_OFFLINE"
    return "or run without --offline (offline=False in Python)"


def download_command(source: Source, folders: list[str] | None = None) -> str:
    """The `hf download` command that puts `folders` of a hub source (all of it without `folders`) into the
    cache. `hf download` takes one glob per `--include`, so the option repeats; the globs are quoted, so that
    a shell passes them on instead of expanding them."""
    include = "".join(f" --include {shlex.quote(f + '/*')}" for f in folders or ())
    return f"hf download {source.repo}{include} --revision {source.revision}"


def package_folder(source: Source) -> Path:
    """The folder `source.path` inside the installed Python package `source.package`."""
    try:
        root = resources.files(source.package)
    except ImportError as e:  # ModuleNotFoundError included
        raise WeightsUnavailable(
            f"the source {source.package}:{source.path} is a folder inside the Python package '{source.package}', "
            f"which cannot be imported here ({type(e).__name__}: {e}): the plugin that ships it may not be installed "
            "(`priorswap doctor` lists the plugins), or the entry's `package` is misspelt"
        ) from None
    return Path(str(root / source.path))


def fetch(
    source: Source,
    folders: list[str] | None = None,
    *,
    offline: bool | None = None,
    allow_pickle: bool = False,
    cache_dir: str | None = None,
) -> Path:
    """A local folder with the requested sub-folders of `source` (downloaded or from the cache)."""
    if source.path is not None:
        folder = package_folder(source) if source.package is not None else Path(source.path).expanduser()
        if folder.is_file():
            raise WeightsUnavailable(
                f"{folder} is a file, not a model folder: for a single checkpoint, name its folder in `path` and the "
                f"file in `file` (source: {{path: {folder.parent}, file: {folder.name}}})"
            )
        if not folder.is_dir():
            raise WeightsUnavailable(f"model folder {folder} does not exist")
        return folder

    from huggingface_hub import snapshot_download

    local_only = is_offline(offline)
    with _hub_errors(source, local_only, download_command(source, folders)):
        path = snapshot_download(
            source.repo,
            revision=source.revision,
            allow_patterns=patterns(folders, allow_pickle),
            ignore_patterns=SKIP_VARIANTS,
            local_files_only=local_only,
            cache_dir=cache_dir,
        )
    return Path(path)


def fetch_file(
    source: Source, *, offline: bool | None = None, cache_dir: str | None = None, log: Any = None
) -> Path:
    """The single file `source.file` (downloaded at the pinned revision, or from the cache / folder).

    A source with `sha256` is verified by content before it is returned (hashing reads the whole file
    once; callers fetch single checkpoints only to convert them). On the hub, a content-pinned source
    whose revision is a branch is first checked against the file's hash the hub reports, so a moved
    branch is refused before anything is downloaded."""
    if source.file is None:
        raise ValueError("fetch_file needs a source with a `file`")
    if source.path is not None:
        path = fetch(source) / source.file
        if not path.is_file():
            raise WeightsUnavailable(f"checkpoint {path} does not exist")
    else:
        from huggingface_hub import hf_hub_download

        local_only = is_offline(offline)
        revision = source.revision
        command = f"hf download {source.repo} {shlex.quote(source.file)} --revision {source.revision}"
        with _hub_errors(source, local_only, command):
            if source.sha256 and not source.pinned_by_commit and not local_only:
                revision = _commit_holding(source)
            path = Path(hf_hub_download(
                source.repo, source.file, revision=revision, local_files_only=local_only, cache_dir=cache_dir
            ))
    if source.sha256:
        verify_sha256(path, source.sha256, source.describe(extras=False), log=log, local=source.path is not None)
    return path


def _commit_holding(source: Source) -> str:
    """The commit the source's branch points at, after checking that its file is the pinned content."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        meta = get_hf_file_metadata(hf_hub_url(source.repo, source.file, revision=source.revision))
    except (EntryNotFoundError, GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError):
        raise  # the hub answered: _hub_errors explains
    except Exception:  # the hub could not be reached: the download falls back to the cache (still verified)
        return source.revision
    etag = meta.etag or ""  # huggingface_hub strips the quotes
    if len(etag) == 64 and etag != source.sha256:  # LFS files report their sha256 as etag
        raise WeightsUnavailable(
            f"{source.repo}@{source.revision}:{source.file} is no longer the pinned file (the hub reports sha256 "
            f"{etag}, the registry pins {source.sha256}): the branch has moved since the entry was written. "
            "Check the new file and update the entry's sha256 (and pin a commit if you know one)."
        )
    return meta.commit_hash or source.revision


def verify_sha256(path: Path, expected: str, what: str, *, log: Any = None, local: bool = False) -> None:
    """Raises WeightsUnavailable unless the file's sha256 is `expected` (read in 8 MiB chunks). `local`: the
    file is the user's own (a `path` source), not a download, and the message says so."""
    import hashlib
    import sys

    size = path.stat().st_size
    if size > 1 << 30:
        (log or (lambda msg: print(msg, file=sys.stderr)))(
            f"verifying {what} ({size / 2**30:.1f} GiB, sha256, once)")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected and local:
        raise WeightsUnavailable(
            f"{path} is not the file the registry entry pins: its sha256 is {digest.hexdigest()}, the entry's "
            f"`sha256` is {expected}. Use the file the entry was written for, or, if this file is the one you "
            "mean, correct the entry's sha256 (`sha256sum` computes it)."
        )
    if digest.hexdigest() != expected:
        raise WeightsUnavailable(
            f"{path} is not the pinned file of {what}: its sha256 is {digest.hexdigest()}, the registry pins "
            f"{expected}. The download may be corrupt or the repo changed: delete the file (e.g. `hf cache "
            "delete`) and fetch it again, or correct the entry."
        )


@contextlib.contextmanager
def _hub_errors(source: Source, local_only: bool, command: str) -> Iterator[None]:
    """Turns huggingface_hub's errors into WeightsUnavailable messages that say what to do (`command`: the
    `hf download` command that fetches what was asked for)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except (LocalEntryNotFoundError, FileNotFoundError) as e:
        how = "offline mode is on" if local_only else "the hub could not be reached"
        raise WeightsUnavailable(
            f"weights for {source.repo}@{source.revision} are not in the Hugging Face cache and {how}. "
            f"On a machine with internet run: {command} (then copy the cache, see HF_HOME), {retry_hint(local_only)}."
        ) from e
    except GatedRepoError as e:
        raise WeightsUnavailable(
            f"{source.repo} is gated: accept its licence on the hub and log in (`hf auth login`)."
        ) from e
    except RevisionNotFoundError as e:
        raise WeightsUnavailable(f"{source.repo} has no revision {source.revision}") from e
    except RepositoryNotFoundError as e:
        raise WeightsUnavailable(f"the hub has no repository {source.repo} (moved? see docs/registry.md)") from e
    except EntryNotFoundError as e:
        raise WeightsUnavailable(f"{source.repo}@{source.revision} has no file {source.file}") from e


def load_component(
    cls: Any,
    folder: Path,
    subfolder: str,
    *,
    allow_pickle: bool = False,
    dtype: Any = None,
) -> Any:
    """Loads a diffusers/transformers component: safetensors first, pickles only when allowed."""
    import pickle

    where = folder / subfolder
    if not where.is_dir():
        raise WeightsUnavailable(f"{folder} has no '{subfolder}' folder")
    if any(where.glob("*.safetensors")):
        kwargs = {"torch_dtype": dtype} if dtype is not None else {}
        return cls.from_pretrained(folder, subfolder=subfolder, use_safetensors=True, **kwargs)
    pickles = sorted(p for p in where.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise WeightsUnavailable(
            f"{where} holds no weights (no .safetensors file). If its source has pickled .bin weights only, "
            "they are downloaded and loaded only with --allow-pickle (allow_pickle=True)."
        )
    if len(pickles) > 1:
        raise WeightsUnavailable(f"{where} holds several pickles; convert the checkpoint to safetensors")
    converted = _converted_pickle(pickles[0])
    if (converted / "config.json").is_file():  # converted on an earlier, opted-in run: no pickle is read
        kwargs = {"torch_dtype": dtype} if dtype is not None else {}
        return cls.from_pretrained(converted, use_safetensors=True, **kwargs)
    if not allow_pickle:
        raise WeightsUnavailable(
            f"{where} holds only pickled weights ({', '.join(p.name for p in pickles)}). Pickles can run "
            "code when loaded: convert them to safetensors, or pass --allow-pickle (allow_pickle=True) "
            "to load them once with torch.load(weights_only=True); priorswap then keeps a safetensors copy in "
            "its cache, and later runs read that copy without the flag."
        )
    if hasattr(cls, "load_config"):  # diffusers
        model = cls.from_config(cls.load_config(folder, subfolder=subfolder))
    else:  # transformers: the model class is built from its config class
        model = cls(cls.config_class.from_pretrained(where))
    try:
        state = load_pickle(pickles[0])
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise unreadable(pickles[0], e) from None
    # older checkpoints store buffers that are no longer persistent (e.g. CLIP's position_ids)
    persistent = model.state_dict().keys()
    stale = {name for name, _ in model.named_buffers()} - persistent
    model.load_state_dict({k: v for k, v in state.items() if k not in stale})
    _save_converted(model, converted)
    return model.to(dtype) if dtype is not None else model


def load_state_dict(file: Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    """The tensors of one weights file that is not a diffusers/transformers component (e.g. a plugin's own
    small projection): safetensors directly; a pickle from its safetensors copy in the cache, or, opted in,
    with torch.load(weights_only=True), keeping that copy so that later runs need no opt-in."""
    from safetensors.torch import load_file, save_file

    if file.suffix == ".safetensors":
        return load_file(file)
    copy = _converted_pickle(file) / "model.safetensors"
    if copy.is_file():
        return load_file(copy)
    if not allow_pickle:
        raise WeightsUnavailable(
            f"{file} is pickled. Pickles can run code when loaded: convert it to safetensors, or pass "
            "--allow-pickle (allow_pickle=True) to load it once with torch.load(weights_only=True); priorswap "
            "then keeps a safetensors copy in its cache, and later runs read that copy without the flag."
        )
    import torch

    state = load_pickle(file)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {k: v.contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    copy.parent.mkdir(parents=True, exist_ok=True)
    tmp = copy.with_name(f"model.tmp-{os.getpid()}.safetensors")
    save_file(tensors, str(tmp))
    tmp.replace(copy)
    return tensors


def load_pickle(file: Path, *, mmap: bool = False) -> Any:
    """An opted-in pickle read with torch.load(weights_only=True) (memory-mapped with `mmap` when the file's
    format allows). A file holding objects other than tensors, which weights_only refuses, raises
    WeightsUnavailable naming the file; a damaged file raises torch's own error (callers word the remedy)."""
    import pickle
    import re

    import torch

    try:
        if mmap:
            try:
                return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
                pass
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not re.search(r"GLOBAL|allowlisted|Can only ", str(e)):  # garbage (an unknown opcode): damaged
            raise
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise WeightsUnavailable(
            f"{file} contains objects other than tensors{f' (it references {found.group(1)})' if found else ''}, so "
            "it cannot be loaded safely: torch.load(weights_only=True) refuses them, and priorswap reads pickles no "
            "other way. Extract its tensors into a safetensors file with a script you trust, and use that file."
        ) from None


def unreadable(file: Path, error: Exception) -> WeightsUnavailable:
    """The error for a pickle that torch.load cannot read (truncated, or not a checkpoint at all)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or ["truncated"]
    why = next((line for line in lines if line.startswith(("Unsupported", "String is"))), lines[0])
    return WeightsUnavailable(f"{file} is not a readable PyTorch checkpoint ({type(error).__name__}: {why}); it is "
                              "damaged or not a checkpoint: download or save it again")


def has_safetensors_copy(pickle: Path) -> bool:
    """Whether an opted-in run already kept a safetensors copy of this pickled file (so no opt-in is needed)."""
    return pickle.is_file() and (_converted_pickle(pickle) / "model.safetensors").is_file()


def _converted_pickle(pickle: Path) -> Path:
    """Cache folder of the safetensors copy of a pickled component: keyed by the file's real path (a
    content hash for hub blobs), size and mtime, so a changed file is converted again."""
    import hashlib

    from .nullcache import checked_home

    real = pickle.resolve()
    stat = real.stat()
    key = hashlib.sha256(f"{real}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    return checked_home() / "converted" / "pickles" / key


def _save_converted(model: Any, out: Path) -> None:
    """Writes `model` (config + safetensors) to `out` atomically; a failure only costs the cache entry."""
    import shutil
    import sys

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        print(f"converted the pickled weights once to safetensors in {out}; later runs read that copy",
              file=sys.stderr)
    except (OSError, RuntimeError) as e:
        print(f"note: could not keep a safetensors copy of the pickled weights ({e})", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def folders_on_demand(request: Any, folders: list[str], purpose: str) -> Path:
    """A folder holding `folders` for a component needed only sometimes (a prior's text encoder, on a
    null-condition cache miss): for a hub source they are fetched now, at the pinned revision, into the
    same snapshot; a local folder must already hold them. Raises WeightsUnavailable naming what is missing."""
    folder = request.folder
    source = request.entry.source
    if source.repo is not None and not all((folder / f).is_dir() for f in folders):
        folder = fetch(source, folders, offline=request.offline, allow_pickle=request.allow_pickle)
    missing = [f for f in folders if not (folder / f).is_dir()]
    if missing and source.repo is not None and is_offline(request.offline):
        raise WeightsUnavailable(
            f"the cached snapshot of {source.repo}@{source.revision} lacks {', '.join(f + '/' for f in missing)}, "
            f"needed for {purpose}, and offline mode is on. On a machine with internet run: "
            f"{download_command(source, missing)} (then copy the cache, see HF_HOME), {retry_hint(True)}."
        )
    if missing:
        raise WeightsUnavailable(f"{folder} has no {' or '.join(missing)} folder, needed for {purpose}")
    return folder
