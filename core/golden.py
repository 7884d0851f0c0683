"""`priorswap check-golden`: run reference fixtures through the plugins that own them and compare.

A fixture folder holds `fixture.json` (`family`, `kind`, `call`, `compare`) and `io.safetensors`
with the reference tensors (format: shared fixtures README, summarised in docs/plugins.md). The
family's plugin registers a checker with the `register_golden_checks` hook; the checker runs the
fixture through the plugin and returns the tensors it produced; this module compares them with the
per-tensor tolerances: a number is an absolute tolerance, `{atol, rtol}` means
|a − b| ≤ atol + rtol·|b| elementwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PriorswapError
from .family import resolve_ref

FIXTURE_FILE = "fixture.json"
REFERENCE_FILE = "io.safetensors"


@dataclass
class Produced:
    """What a checker returns: produced tensors by name, and optional extra pass/fail checks
    (name, ok, detail), e.g. "the full-size state_dict has the manifest's keys and shapes"."""

    tensors: dict[str, Any]
    checks: list[tuple[str, bool, str]] = field(default_factory=list)


@dataclass
class Comparison:
    """One compared tensor or extra check of one fixture."""

    name: str
    ok: bool
    max_abs: float | None = None
    atol: float | None = None
    rtol: float | None = None
    detail: str = ""


@dataclass
class FixtureResult:
    folder: Path
    family: str
    comparisons: list[Comparison]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.comparisons) and all(c.ok for c in self.comparisons)


def find_fixtures(root: Path) -> list[Path]:
    """`root` itself when it holds fixture.json, else every folder below it that does (sorted)."""
    root = Path(root)
    if not root.exists():
        raise PriorswapError(f"fixture folder {root} does not exist")
    if (root / FIXTURE_FILE).is_file():
        return [root]
    found = sorted(p.parent for p in root.rglob(FIXTURE_FILE))
    if not found:
        raise PriorswapError(f"no {FIXTURE_FILE} under {root}: point check-golden at a fixture folder")
    return found


def read_fixture(folder: Path) -> dict:
    try:
        fixture = json.loads((folder / FIXTURE_FILE).read_text())
    except json.JSONDecodeError as e:
        raise PriorswapError(f"{folder / FIXTURE_FILE} is not valid JSON: {e}") from None
    except OSError as e:
        raise PriorswapError(f"{folder / FIXTURE_FILE} cannot be read: {e}") from None
    if not isinstance(fixture, dict):
        raise PriorswapError(f"{folder / FIXTURE_FILE} must hold a JSON object, got {type(fixture).__name__}")
    for key in ("family", "compare"):
        if key not in fixture:
            raise PriorswapError(f"{folder / FIXTURE_FILE} lacks the '{key}' field")
    return fixture


def _bound(value: Any, what: str) -> float:
    """One tolerance value: a finite number ≥ 0 (not a bool, which JSON's `true` would make 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PriorswapError(f"{what} must be a number, got {json.dumps(value, default=repr)}")
    if not math.isfinite(value) or value < 0:
        raise PriorswapError(f"{what} must be a finite number ≥ 0, got {value!r}")
    return float(value)


def tolerance(spec: Any) -> tuple[float, float]:
    """(atol, rtol) from a fixture's compare entry: a number (atol), or {atol, rtol}; each a finite number ≥ 0."""
    if isinstance(spec, dict) and set(spec) <= {"atol", "rtol"}:
        return _bound(spec.get("atol", 0.0), "'atol'"), _bound(spec.get("rtol", 0.0), "'rtol'")
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return _bound(spec, "a tolerance"), 0.0
    raise PriorswapError(f"a tolerance is a number or {{atol, rtol}}, got {json.dumps(spec, default=repr)}")


def find_all(folders: list[Path]) -> list[Path]:
    """The fixtures of every folder (`find_fixtures`), each once: a fixture reached twice (given twice, or
    given and found below another folder given) is checked and counted once, in first-seen order."""
    seen: set[Path] = set()
    found = []
    for folder in folders:
        for fixture in find_fixtures(folder):
            key = fixture.resolve()
            if key not in seen:
                seen.add(key)
                found.append(fixture)
    return found


SHOWN = 12  # names listed in Required's message


class Required(dict):
    """A fixture's inputs (the tensors of io.safetensors, the fields of its `call`) for a checker: a missing
    key raises a PriorswapError naming it, the fixture file and what is there, instead of a bare KeyError.
    `.get` keeps its default, for inputs that are optional on purpose."""

    def __init__(self, items: dict, where: str, what: str) -> None:
        super().__init__(items)
        self.where, self.what = where, what

    def __missing__(self, key: str) -> Any:
        names = sorted(map(str, self))
        held = ", ".join(names[:SHOWN]) + (f", … ({len(names)} in all)" if len(names) > SHOWN else "")
        raise PriorswapError(f"{self.where} lacks the {self.what} '{key}' (it has: {held or 'none'})")


def read_inputs(folder: Path) -> Required:
    """The tensors of `folder`/io.safetensors, each required by name (`Required`)."""
    from safetensors.torch import load_file

    path = Path(folder) / REFERENCE_FILE
    return Required(load_file(path), str(path), "input tensor")


def call_of(folder: Path, fixture: dict) -> Required:
    """The fixture's `call` object (the sampling arguments), each field required by name (`Required`)."""
    where = str(Path(folder) / FIXTURE_FILE)
    call = Required(fixture, where, "field")["call"]
    if not isinstance(call, dict):
        raise PriorswapError(f"{where}: 'call' must be an object of sampling arguments, "
                             f"got {json.dumps(call, default=repr)}")
    return Required(call, f"{where}'s 'call'", "field")


def compare(name: str, produced: Any, reference: Any, atol: float, rtol: float) -> Comparison:
    """Elementwise |a − b| ≤ atol + rtol·|b| in float64; shapes must match."""
    import torch

    a = torch.as_tensor(produced).detach().cpu().double()
    b = torch.as_tensor(reference).detach().cpu().double()
    if a.shape != b.shape:
        return Comparison(name, False, atol=atol, rtol=rtol,
                          detail=f"shape {tuple(a.shape)} vs reference {tuple(b.shape)}")
    diff = (a - b).abs()
    excess = (diff - (atol + rtol * b.abs())).max().item() if diff.numel() else 0.0
    finite = bool(torch.isfinite(a).all())
    return Comparison(name, finite and excess <= 0, diff.max().item() if diff.numel() else 0.0, atol, rtol,
                      "" if finite else "non-finite values")


def check_fixture(folder: Path, plugins: Any = None) -> FixtureResult:
    """Runs one fixture through its family's checker and compares every tensor of `compare`.

    Anything wrong with this fixture (unreadable fixture.json, a malformed tolerance, no io.safetensors,
    a checker that raises) becomes this fixture's `error`, so the other fixtures still run."""
    from safetensors.torch import load_file

    from .plugin_manager import get_plugins

    plugins = plugins or get_plugins()
    try:
        fixture = read_fixture(folder)
    except PriorswapError as e:
        return FixtureResult(folder, "?", [], str(e))
    family = str(fixture["family"])
    try:
        if not isinstance(fixture["compare"], dict) or not fixture["compare"]:
            raise PriorswapError(f"{folder / FIXTURE_FILE}: 'compare' must map tensor names to tolerances, "
                                 f"got {fixture['compare']!r}")
        tolerances = {}
        for name, spec in fixture["compare"].items():
            try:
                tolerances[name] = tolerance(spec)
            except PriorswapError as e:
                raise PriorswapError(f"{folder / FIXTURE_FILE}: compare['{name}']: {e}") from None
        if not (folder / REFERENCE_FILE).is_file():
            raise PriorswapError(f"{folder} has no {REFERENCE_FILE} with the reference tensors; "
                                 "a fixture folder holds fixture.json and io.safetensors")
    except PriorswapError as e:
        return FixtureResult(folder, family, [], str(e))
    checkers = plugins.golden_checks
    if family not in checkers:
        known = ", ".join(sorted(checkers)) or "none"
        return FixtureResult(folder, family, [], f"no installed plugin checks the family '{family}' "
                             f"(families with golden checks: {known}).{plugins.hint()}")
    try:
        reference = load_file(folder / REFERENCE_FILE)
    except Exception as e:
        return FixtureResult(folder, family, [], f"{folder / REFERENCE_FILE} does not load "
                             f"({type(e).__name__}: {e})")
    from .cli import quiet_transformers

    quiet_transformers()  # checkers load components through transformers: no "Loading weights" bars in the table
    try:
        result = resolve_ref(checkers[family])(folder, fixture)
    except PriorswapError as e:  # a message written for the user: as it is
        return FixtureResult(folder, family, [], str(e))
    except Exception as e:  # report the failure of this fixture, go on with the others
        return FixtureResult(folder, family, [], f"{type(e).__name__}: {e}")
    produced = result if isinstance(result, Produced) else Produced(dict(result))
    comparisons = []
    for name, (atol, rtol) in tolerances.items():
        if name not in reference:
            comparisons.append(Comparison(name, False, detail=f"not in {REFERENCE_FILE}"))
        elif name not in produced.tensors:
            comparisons.append(Comparison(name, False, detail="the checker did not produce it"))
        else:
            comparisons.append(compare(name, produced.tensors[name], reference[name], atol, rtol))
    comparisons += [Comparison(name, ok, detail=detail) for name, ok, detail in produced.checks]
    return FixtureResult(folder, family, comparisons)
