"""Reading the JSON configs of a model folder, with errors a user can act on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import PriorswapError


def read_json(path: Path, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object in `path` (a model folder's config, scheduler config or index). A missing file gives
    `{}` when `optional`, else a PriorswapError naming it; a damaged one always gives a PriorswapError."""
    path = Path(path)
    if not path.is_file():
        if optional:
            return {}
        raise PriorswapError(
            f"{path} is missing: {path.parent} is not a complete model folder; save or download it again"
        )
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PriorswapError(f"{path} is not valid JSON ({e}); the folder is damaged: save or download it again") \
            from None
    if not isinstance(value, dict):
        raise PriorswapError(f"{path} holds a JSON {type(value).__name__}, not an object: the folder is damaged")
    return value
