"""Dataset folders for `priorswap eval --data DIR`: DIR/items.jsonl, one task input per line.

Each line is a JSON object: the task's input fields (the names of `priorswap sample`'s task options,
with `_`; image paths relative to DIR) plus the reserved keys `id` (default: the line number),
`target` (a reference image for paired metrics), `caption_in` and `caption_out` (captions of the input
and of the wanted output, for CLIP directional similarity). docs/eval.md describes the format.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import PriorswapError
from .task import Task, TaskInputs

if typing.TYPE_CHECKING:
    from .registry import ModelEntry

ITEMS_FILE = "items.jsonl"
RESERVED = ("id", "target", "caption_in", "caption_out")
FORMAT_DOC = "docs/eval.md"
MAX_REPORTED = 12


class DatasetError(PriorswapError):
    """A dataset folder or one of its lines is malformed."""


@dataclass(frozen=True)
class Item:
    """One validated line of items.jsonl."""

    id: str
    line: int
    inputs: TaskInputs
    target: Path | None = None
    caption_in: str | None = None
    caption_out: str | None = None

    def value(self, field: str) -> Any:
        """A task input field, or None when the task has no such field."""
        return getattr(self.inputs, field, None)


def _mentions_path(annotation: Any) -> bool:
    if annotation is Path or (isinstance(annotation, type) and issubclass(annotation, Path)):
        return True
    return any(_mentions_path(arg) for arg in typing.get_args(annotation))


def path_fields(inputs: type[TaskInputs]) -> list[str]:
    """The task input fields that hold file paths (Path, FilePath, Path | None, list[Path], ...)."""
    return [name for name, f in inputs.model_fields.items() if _mentions_path(f.annotation)]


def _resolve(folder: Path, value: Any) -> Any:
    """A path value relative to the dataset folder (absolute and non-string values are kept)."""
    if isinstance(value, str):
        return str(folder / Path(value).expanduser())
    if isinstance(value, list):
        return [_resolve(folder, v) for v in value]
    return value


def _missing_files(value: Any) -> dict[str, str]:
    """The paths of `value` (one or a list) that name no file → what is there instead."""
    values = value if isinstance(value, list) else [value]
    return {v: "is a folder, not a file" if Path(v).is_dir() else "does not exist"
            for v in values if isinstance(v, str) and not Path(v).is_file()}


def _is_image_field(name: str) -> bool:
    """Input fields named `image` or `..._image` (`end_image`) hold images: their files are opened up front."""
    return name == "image" or name.endswith("_image")


def _image_problem(path: Path) -> str | None:
    """Why `path` is not an image file PIL can open (its header only), or None when it is one."""
    from .images import check_image_file

    try:
        check_image_file(path)
    except ValueError as e:
        return str(e)
    return None


class _Problems:
    """Collects problems line by line and raises them together."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.items: list[str] = []

    def add(self, line: int, message: str, field: str | None = None) -> None:
        self.items.append(f"line {line}" + (f", field '{field}'" if field else "") + f": {message}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED]
        more = f"; and {len(self.items) - MAX_REPORTED} more" if len(self.items) > MAX_REPORTED else ""
        raise DatasetError(
            f"{self.file}: {'; '.join(shown)}{more}. Fix these lines (the format is described in {FORMAT_DOC})"
        )


def _pydantic_problems(e: ValidationError, task: type[Task]) -> list[tuple[str | None, str]]:
    fields = ", ".join(task.Inputs.model_fields)
    out = []
    for err in e.errors():
        loc = err.get("loc") or ()
        field = str(loc[0]) if loc else None
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; task '{task.name}' takes {fields} (and the reserved {', '.join(RESERVED)})"
        elif err["type"] == "missing":
            msg = f"missing: task '{task.name}' requires it"
        else:
            where = ".".join(map(str, loc[1:]))
            msg = err["msg"] + (f" (at {where})" if where else "")
        out.append((field, msg))
    return out


def _parse_line(text: str, number: int, folder: Path, task: type[Task], problems: _Problems,
                entry: ModelEntry | None) -> Item | None:
    try:
        raw = json.loads(text.rstrip("\r\n"))  # without the newline, an error at the end has this line's column
    except json.JSONDecodeError as e:
        problems.add(number, f"not valid JSON ({e.msg} at column {e.colno})")
        return None
    if not isinstance(raw, dict):
        problems.add(number, f"a JSON object {{...}} is expected, got {type(raw).__name__}")
        return None
    before = len(problems.items)
    item_id = raw.pop("id", number)
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        problems.add(number, "must be a string or an integer", "id")
    captions = {}
    for key in ("caption_in", "caption_out"):
        value = raw.pop(key, None)
        if value is not None and not isinstance(value, str):
            problems.add(number, "must be a string", key)
        captions[key] = value if isinstance(value, str) else None
    target = raw.pop("target", None)
    if target is not None:
        if not isinstance(target, str):
            problems.add(number, "must be an image path (a string, relative to the dataset folder)", "target")
            target = None
        else:
            target = Path(_resolve(folder, target))
            for path, what in _missing_files(str(target)).items():
                problems.add(number, f"{path} {what} (paths are relative to {folder})", "target")
            if target.is_file() and (problem := _image_problem(target)):
                problems.add(number, problem, "target")
    for name in path_fields(task.Inputs):
        if name in raw:
            raw[name] = _resolve(folder, raw[name])
            missing = _missing_files(raw[name])
            for path, what in missing.items():
                problems.add(number, f"{path} {what} (paths are relative to {folder})", name)
            if _is_image_field(name):
                values = raw[name] if isinstance(raw[name], list) else [raw[name]]
                for path in values:
                    if isinstance(path, str) and path not in missing and (problem := _image_problem(Path(path))):
                        problems.add(number, problem, name)
    if len(problems.items) > before:
        return None
    try:
        inputs = task.Inputs.model_validate(raw)
    except ValidationError as e:
        for field, msg in _pydantic_problems(e, task):
            problems.add(number, msg, field)
        return None
    if entry is not None:
        try:
            task.check_inputs(inputs, entry)
        except PriorswapError as e:
            problems.add(number, str(e))
            return None
    return Item(str(item_id), number, inputs, target, captions["caption_in"], captions["caption_out"])


def _decode(data: bytes, number: int, problems: _Problems) -> str | None:
    """A line of items.jsonl as text (UTF-8; a byte-order mark at the start of the file is skipped), or None
    with the problem noted."""
    try:
        return data.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as e:
        problems.add(number, f"not UTF-8 (byte 0x{data[e.start]:02x} at byte {e.start + 1} of the line); save "
                             f"{ITEMS_FILE} as UTF-8")
        return None


def load_items(folder: str | Path, task: type[Task], limit: int | None = None,
               entry: ModelEntry | None = None) -> list[Item]:
    """The items of `folder/items.jsonl`, each validated with the task's Inputs model and, given the model's
    registry `entry`, its `Task.check_inputs` (blank lines are skipped; `limit`: only the first N items are
    read). Raises DatasetError naming every bad line and field."""
    folder = Path(folder).expanduser()
    file = folder / ITEMS_FILE
    if folder.is_file():
        hint = f"give its folder, --data {folder.parent}" if folder.name == ITEMS_FILE else \
            f"give the folder that holds {ITEMS_FILE}"
        raise DatasetError(f"--data {folder} is a file, not a dataset folder; {hint} (see {FORMAT_DOC})")
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist (it should hold {ITEMS_FILE}; see {FORMAT_DOC})")
    if not file.is_file():
        raise DatasetError(f"{folder} has no {ITEMS_FILE}: one JSON object per line, see {FORMAT_DOC}")
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be at least 1, got {limit}")
    problems = _Problems(file)
    items: list[Item] = []
    seen: dict[str, int] = {}
    count = 0
    with file.open("rb") as lines:
        for number, data in enumerate(lines, start=1):
            if not data.strip():
                continue
            if limit is not None and count >= limit:
                break
            count += 1
            text = _decode(data, number, problems)
            item = _parse_line(text, number, folder, task, problems, entry) if text is not None else None
            if item is None:
                continue
            if item.id in seen:
                problems.add(number, f"'{item.id}' is already the id of line {seen[item.id]}", "id")
                continue
            seen[item.id] = number
            items.append(item)
    problems.raise_if_any()
    if not items:
        raise DatasetError(f"{file} holds no items (one JSON object per line, see {FORMAT_DOC})")
    return items
