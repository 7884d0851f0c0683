"""What made an output: a JSON run record embedded in the PNG, GIF, MP4 and safetensors files priorswap writes.

A record names the model and prior with their sources (repo and pinned revision, or folder), the
guidance rule and its weights, steps, scheduler, η, seed, dtypes, the device and torch version, the
task inputs with the sha256 of every input file and, from the CLI, the command line. PNG keeps it in a
text chunk, GIF in its comment, MP4 in the `comment` tag, safetensors (`--save-latents`) in its header's
metadata under `priorswap`; `read_record` (and `priorswap info FILE`) reads it back.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PriorswapError

if TYPE_CHECKING:
    from .api import Pair
    from .guidance import Guidance
    from .task import TaskInputs

KEY = "priorswap"
"""The PNG text-chunk key of the record."""


def command_line(argv: list[str] | None = None) -> str:
    """The priorswap command as typed (for the `command` field of a CLI record)."""
    return shlex.join(["priorswap", *(sys.argv[1:] if argv is None else argv)])


def _role(loaded: Any, plugins: Any) -> dict[str, Any] | None:
    if loaded is None:
        return None
    entry = loaded.resolved.entry
    source = entry.source.model_dump(mode="json", exclude_defaults=True)
    return {"id": loaded.id, "source": source, "dtype": str(loaded.denoiser.dtype).removeprefix("torch."),
            "resolution": getattr(loaded.denoiser, "resolution", None), "plugin": plugins.provider(entry.plugin)}


def formula(terms: list[tuple[float, str, str]]) -> str:
    """A guidance rule's weighted branches as text: "2·model(full) − 1·prior(null)"."""
    text = " ".join(f"{'−' if w < 0 else '+'} {abs(w):g}·{role}({level})" for w, role, level in terms)
    return text.removeprefix("+ ")


def guidance_record(rule: Guidance) -> dict[str, Any]:
    """The rule's name, weighted branches, rescale φ and σ interval."""
    return {
        "method": rule.name,
        "terms": [{"weight": t.weight, "role": t.role, "level": t.level} for t in rule.terms],
        "rescale": rule.rescale,
        "interval": list(rule.interval) if rule.interval is not None else None,
    }


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_hashes(inputs: TaskInputs) -> dict[str, Any]:
    """The sha256 of every file the task inputs name, by field: a hash for a path, a list (in order) for a
    list of paths; fields without files are left out (as are paths that name no file)."""
    def one(value: Any) -> str | None:
        return file_sha256(value) if isinstance(value, Path) and value.expanduser().is_file() else None

    out: dict[str, Any] = {}
    for name, value in inputs:
        if isinstance(value, (list, tuple)):
            hashes = [one(v) for v in value]
            if any(h is not None for h in hashes):
                out[name] = hashes
        elif (digest := one(value)) is not None:
            out[name] = digest
    return out


def _device(denoiser: Any) -> str:
    """"cpu", "cuda:0", ...: the device the networks ran on, with its index."""
    import torch

    device = torch.device(getattr(denoiser, "device", "cpu"))
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def run_record(
    pair: Pair, rule: Guidance, inputs: TaskInputs, *, steps: int, scheduler: str, eta: float, seed: int,
    num_samples: int, autocast: Any = None, noise: str = "seed", parallel_forwards: bool = False,
) -> dict[str, Any]:
    """The facts of one `Pair.sample` call, JSON-ready. `noise` is "seed" (drawn from `seed`) or "given".
    `parallel_forwards` (forwards did run side by side) is recorded only when true: it can change the last
    bits of a result."""
    import torch

    from . import __version__
    from .plugin_manager import get_plugins

    plugins = pair.plugins or get_plugins()

    return {
        "priorswap": __version__,
        "torch": torch.__version__,
        "device": _device(pair.model.denoiser),
        "task": pair.task.name,
        "model": _role(pair.model, plugins),
        "prior": _role(pair.prior, plugins),
        "adapters": pair.inserted,
        "guidance": guidance_record(rule),
        "steps": steps,
        "scheduler": scheduler,
        "eta": eta,
        "seed": seed,
        "noise": noise,
        "num_samples": num_samples,
        "autocast": str(autocast).removeprefix("torch.") if autocast is not None else None,
        "inputs": inputs.model_dump(mode="json"),
        "input_sha256": input_hashes(inputs),
        **({"parallel_forwards": True} if parallel_forwards else {}),
    }


def sample_arguments(record: dict[str, Any], noise: Any = None, seed: int | None = None) -> dict[str, Any]:
    """`Pair.sample` keyword arguments that redo the recorded run (load the recorded model and prior first).
    A grid made with several seeds records them all: choose the one to redo with `seed=`. A run that started
    from a given noise tensor (`record["noise"] == "given"`) redoes only with that tensor: pass it as `noise`."""
    from .guidance import Guidance, Term

    if record.get("noise") == "given" and noise is None:
        raise PriorswapError("this run started from a noise tensor given to Pair.sample, not from its seed; pass "
                             "the same tensor: sample_arguments(record, noise=...)")
    recorded = record["seed"] if isinstance(record["seed"], list) else [record["seed"]]
    if seed is None and len(recorded) > 1:
        raise PriorswapError(f"this record holds {len(recorded)} runs, seeds {', '.join(map(str, recorded))}: choose "
                             f"one, sample_arguments(record, seed={recorded[0]})")
    if seed is not None and seed not in recorded:
        raise PriorswapError(f"seed {seed!r} is not one this record was made with ({', '.join(map(str, recorded))})")

    g = record["guidance"]
    rule = Guidance(g["method"], tuple(Term(t["weight"], t["role"], t["level"]) for t in g["terms"]),
                    g["rescale"], tuple(g["interval"]) if g["interval"] is not None else None)
    args = {"inputs": record["inputs"], "guidance": rule, "steps": record["steps"], "scheduler": record["scheduler"],
            "eta": record["eta"], "num_samples": record["num_samples"]}
    args["seed"] = recorded[0] if seed is None else seed
    if noise is not None:
        args["noise"] = noise
    if record.get("autocast"):
        import torch

        args["autocast"] = getattr(torch, record["autocast"])
    if record.get("parallel_forwards"):
        args["parallel_forwards"] = True
    return args


def dumps(record: dict[str, Any]) -> str:
    """Compact ASCII JSON (fits a PNG tEXt chunk, a GIF comment and an MP4 tag)."""
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), sort_keys=False)


def safetensors_metadata(record: dict[str, Any] | None) -> dict[str, str] | None:
    """The safetensors header metadata (str → str) carrying the record (None when there is no record)."""
    return None if record is None else {KEY: dumps(record)}


def png_info(record: dict[str, Any] | None):
    """A PIL PngInfo carrying the record (None when there is no record)."""
    if record is None:
        return None
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(KEY, dumps(record))
    return info


def _parse(text: str | bytes | None, path: Path) -> dict[str, Any]:
    if text is None:
        raise PriorswapError(f"{path} has no priorswap record (it was not written by priorswap, or was re-saved)")
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PriorswapError(f"{path}: its priorswap record is not valid JSON") from None
    if not isinstance(record, dict) or KEY not in record:
        raise PriorswapError(f"{path} has no priorswap record (its metadata is someone else's)")
    return record


def read_record(path: str | Path) -> dict[str, Any]:
    """The run record embedded in a PNG, GIF, MP4 or safetensors file that priorswap wrote."""
    path = Path(path)
    if path.is_dir():
        raise PriorswapError(f"{path} is a folder: give a file priorswap wrote (a .png, .gif or .mp4 image or "
                             "video, or a .safetensors latents file), e.g. one of the files in it")
    if not path.is_file():
        raise PriorswapError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".png", ".gif"):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                text = image.text.get(KEY) if suffix == ".png" else image.info.get("comment")
        except (UnidentifiedImageError, OSError) as e:
            raise PriorswapError(f"{path} is not a readable {suffix[1:].upper()} image: {e}") from None
        return _parse(text, path)
    if suffix == ".mp4":
        try:
            import av
        except ImportError:
            raise PriorswapError("reading MP4 metadata needs PyAV: pip install av") from None
        try:
            with av.open(str(path)) as container:
                text = container.metadata.get("comment")
        except av.error.FFmpegError as e:
            raise PriorswapError(f"{path} is not a readable MP4 file: {e}") from None
        return _parse(text, path)
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise PriorswapError(f"{path} is not a readable safetensors file: {e}") from None
        return _parse(metadata.get(KEY), path)
    kind = suffix or "files without a suffix"
    raise PriorswapError(f"{path}: records are kept in .png, .gif, .mp4 and .safetensors files, not {kind}")
