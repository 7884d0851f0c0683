"""What made an output: a JSON run record embedded in the PNG, GIF and MP4 files priorswap writes.

A record names the model and prior with their sources (repo and pinned revision, or folder), the
guidance rule and its weights, steps, scheduler, η, seed, dtypes, the task inputs and, from the CLI,
the command line. PNG keeps it in a text chunk, GIF in its comment, MP4 in the `comment` tag;
`read_record` (and `priorswap info FILE`) reads it back.
"""

from __future__ import annotations

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


def _role(loaded: Any) -> dict[str, Any] | None:
    if loaded is None:
        return None
    entry = loaded.resolved.entry
    source = entry.source.model_dump(mode="json", exclude_defaults=True)
    return {"id": loaded.id, "source": source, "dtype": str(loaded.denoiser.dtype).removeprefix("torch.")}


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


def run_record(
    pair: Pair, rule: Guidance, inputs: TaskInputs, *, steps: int, scheduler: str, eta: float, seed: int,
    num_samples: int, autocast: Any = None,
) -> dict[str, Any]:
    """The facts of one `Pair.sample` call, JSON-ready."""
    from . import __version__

    return {
        "priorswap": __version__,
        "task": pair.task.name,
        "model": _role(pair.model),
        "prior": _role(pair.prior),
        "adapters": pair.plan.lines() if pair.plan is not None else [],
        "guidance": guidance_record(rule),
        "steps": steps,
        "scheduler": scheduler,
        "eta": eta,
        "seed": seed,
        "num_samples": num_samples,
        "autocast": str(autocast).removeprefix("torch.") if autocast is not None else None,
        "inputs": inputs.model_dump(mode="json"),
    }


def sample_arguments(record: dict[str, Any]) -> dict[str, Any]:
    """`Pair.sample` keyword arguments that redo the recorded run (load the recorded model and prior first;
    a grid's record holds all its seeds, so pass one `seed=` of them)."""
    from .guidance import Guidance, Term

    g = record["guidance"]
    rule = Guidance(g["method"], tuple(Term(t["weight"], t["role"], t["level"]) for t in g["terms"]),
                    g["rescale"], tuple(g["interval"]) if g["interval"] is not None else None)
    args = {"inputs": record["inputs"], "guidance": rule, "steps": record["steps"], "scheduler": record["scheduler"],
            "eta": record["eta"], "num_samples": record["num_samples"]}
    if isinstance(record["seed"], int):
        args["seed"] = record["seed"]
    if record.get("autocast"):
        import torch

        args["autocast"] = getattr(torch, record["autocast"])
    return args


def dumps(record: dict[str, Any]) -> str:
    """Compact ASCII JSON (fits a PNG tEXt chunk, a GIF comment and an MP4 tag)."""
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), sort_keys=False)


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
    """The run record embedded in a PNG, GIF or MP4 that priorswap wrote."""
    path = Path(path)
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
    kind = suffix or "files without a suffix"
    raise PriorswapError(f"{path}: records are kept in .png, .gif and .mp4 files, not {kind}")
