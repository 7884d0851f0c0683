"""The catalogue of models, priors and latent spaces (registry.yaml), validated with pydantic.

The shipped file is merged with files from plugins and the user (`--registry`, or
PRIORSWAP_REGISTRY with paths separated by the OS path separator); later files override ids, and the
merged registry remembers which file each id and latent space came from (`Registry.origin`). Within one
file an id (or any key) may appear only once.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import PluginRegistryWarning, RegistryError

COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
Role = Literal["model", "prior"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(Strict):
    """Where weights live: a hub repo pinned to a commit, a local folder, or a folder inside a package.

    `file` names a single checkpoint in that repo or folder (e.g. a Lightning `model.ckpt`) that the
    family's converter turns, once, into a per-component folder in priorswap's cache. `sha256` pins
    that file by content: the file is verified before it is used, and a hub source pinned this way
    may name a branch as its revision (where no commit of the repo is known). `extra_files` are more
    single files (each a source with its own `file` and pin) the conversion reads beside the checkpoint,
    e.g. the encoders a pruned checkpoint left out."""

    repo: str | None = None
    revision: str | None = None
    path: str | None = None
    package: str | None = None
    file: str | None = None
    sha256: str | None = None
    extra_files: tuple[Source, ...] = ()

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        if (self.repo is None) == (self.path is None):
            raise ValueError("give either `repo` (with `revision`) or `path`")
        if self.repo is not None:
            if "/" not in self.repo:
                raise ValueError(f"repo {self.repo!r} must look like 'owner/name'")
            if self.sha256 is not None and self.file is not None:
                if not self.revision:
                    raise ValueError("a content-pinned source needs a `revision` (a commit, or the branch to read)")
            elif self.revision is None or not COMMIT.match(self.revision):
                raise ValueError(
                    f"revision {self.revision!r} must be a full 40-character commit hash (pin the exact snapshot),"
                    " or give `file` with its `sha256` to pin a single checkpoint by content"
                )
        if self.sha256 is not None:
            if self.file is None:
                raise ValueError("`sha256` pins a single checkpoint: give the `file` it belongs to")
            if not SHA256.match(self.sha256):
                raise ValueError(f"sha256 {self.sha256!r} must be 64 lowercase hex digits")
        if self.package is not None and self.path is None:
            raise ValueError("`package` needs a `path` inside that package")
        if self.file is not None and (not self.file or self.file.startswith("/") or ".." in Path(self.file).parts):
            raise ValueError(f"file {self.file!r} must be a relative path inside the repo or folder")
        if self.extra_files and self.file is None:
            raise ValueError("`extra_files` go with a single-checkpoint source: give its `file` too")
        for extra in self.extra_files:
            if extra.file is None or extra.extra_files:
                raise ValueError("each of `extra_files` names one `file` (and has no extra files of its own)")
        return self

    @property
    def pinned_by_commit(self) -> bool:
        """True for hub sources whose revision is a full commit hash."""
        return self.repo is not None and bool(COMMIT.match(self.revision or ""))

    def describe(self, extras: bool = True) -> str:
        """repo@revision:file (sha256 …), then ` + ` and each extra file, unless `extras` is False."""
        revision = (self.revision or "")[:10] if self.pinned_by_commit else self.revision
        where = f"{self.repo}@{revision}" if self.repo else (
            f"{self.package}:{self.path}" if self.package else str(self.path))
        where = f"{where}:{self.file}" if self.file else where
        where = f"{where} (sha256 {self.sha256[:12]}…)" if self.sha256 else where
        return " + ".join([where, *(extra.describe() for extra in self.extra_files if extras)])


class ScheduleSpec(Strict):
    """A training noise schedule, enough to decide whether two models share one."""

    kind: Literal["vp", "flow"] = "vp"
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    num_train_timesteps: int = 1000
    zero_terminal_snr: bool = False

    def key(self) -> str:
        if self.kind == "flow":
            return f"flow/{self.num_train_timesteps}"
        if self.beta_schedule == "squaredcos_cap_v2":
            base = f"cosine/{self.num_train_timesteps}"
        else:
            base = f"{self.beta_schedule}({self.beta_start:g}–{self.beta_end:g})/{self.num_train_timesteps}"
        return base + ("+ztsnr" if self.zero_terminal_snr else "")


class LatentSpaceSpec(Strict):
    """Channels, scale and shift (latent = (z − shift)·scale), downsampling, and the autoencoder family.

    The autoencoder's weights are not named here: a model decodes with the `vae/` of its own folder."""

    channels: int = Field(gt=0)
    scale: float = 1.0
    shift: float = 0.0
    downsample: int = Field(8, gt=0)
    family: str = ""


class Recommended(Strict):
    steps: int = Field(50, gt=0)
    guidance: float = 1.5
    image_guidance: float | None = None
    scheduler: Literal["ddim", "euler", "native"] = "ddim"
    eta: float = Field(0.0, ge=0.0, le=1.0)  # DDIM stochasticity (0: deterministic DDIM, 1: DDPM-like)


class ModelEntry(Strict):
    """One model: which plugin loads it, from where, and the facts the pair planner needs."""

    plugin: str
    roles: list[Role] = ["model"]
    source: Source
    folders: dict[Role, list[str]] = {}
    latent_space: str | LatentSpaceSpec
    schedule: ScheduleSpec = ScheduleSpec()
    parameterization: Literal["epsilon", "v_prediction", "sample", "flow"] = "epsilon"
    modality: Literal["image", "video"] = "image"
    resolution: int = Field(gt=0)
    learned_sigma: bool = False
    fixed_size: bool = False
    task: str | None = None
    variant: str | None = None
    recommended: Recommended = Recommended()
    license: str | None = None
    description: str = ""


class RegistryFile(Strict):
    version: Literal[1] = 1
    latent_spaces: dict[str, LatentSpaceSpec] = {}
    models: dict[str, ModelEntry] = {}


def _format_errors(origin: str, err: ValidationError) -> str:
    lines = [f"{origin} is not a valid registry file:"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if len(loc) >= 2 and loc[0] in ("models", "latent_spaces"):
            where = f"entry '{loc[1]}' in {loc[0]}"
            field = ".".join(loc[2:]) or "(the entry itself)"
        else:
            where, field = "top level", ".".join(loc) or "(file)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see docs/registry.md)"
            if loc[0] == "latent_spaces" and loc[-1] in ("vae", "vae_subfolder"):
                msg = ("not a field: a latent space names no autoencoder weights (a model decodes with the vae/ "
                       "of its own folder); remove it")
        lines.append(f"  - {where}, field '{field}': {msg}")
    return "\n".join(lines)


class DuplicateKey(Exception):
    """A key that appears twice in one YAML mapping (yaml.safe_load would silently keep the last one)."""

    def __init__(self, key: str, first: int, again: int) -> None:
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml when present: faster start-up
    """The safe loader, refusing a key repeated within one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            first = seen.setdefault((key_node.tag, key_node.value), line)
            if first != line:
                raise DuplicateKey(key_node.value, first, line)
        return super().construct_mapping(node, deep=deep)


def parse_file(path: Path) -> RegistryFile:
    """Reads and validates one registry YAML file; errors name the file, the entry and the field."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise RegistryError(f"registry file {path} does not exist") from None
    except IsADirectoryError:
        raise RegistryError(f"registry file {path} is a folder: pass the YAML file itself") from None
    except UnicodeDecodeError as e:
        raise RegistryError(f"registry file {path} is not UTF-8 text (byte {e.start} cannot be decoded): save it "
                            "as UTF-8 YAML") from None
    except OSError as e:
        raise RegistryError(f"registry file {path} cannot be read: {e.strerror or e}") from None
    except DuplicateKey as e:
        raise RegistryError(
            f"{path}, line {e.again}: '{e.key}' appears twice in the same mapping (first on line {e.first}). A model "
            "id, latent space or field is defined once per file; to replace an entry of another registry file, "
            "define it in a file that loads later (see docs/registry.md)"
        ) from None
    except yaml.YAMLError as e:
        raise RegistryError(f"{path} is not valid YAML: {e}") from None
    try:
        parsed = RegistryFile.model_validate(data)
    except ValidationError as e:
        raise RegistryError(_format_errors(str(path), e)) from None
    return _resolve_relative(parsed, path.parent)


def _resolve_relative(reg: RegistryFile, base: Path) -> RegistryFile:
    def fix(src: Source | None) -> Source | None:
        if src is None:
            return None
        if src.extra_files:
            src = src.model_copy(update={"extra_files": tuple(fix(e) for e in src.extra_files)})
        if src.path is None or src.package is not None:
            return src
        path = Path(src.path).expanduser()
        return src.model_copy(update={"path": str(path if path.is_absolute() else (base / path).resolve())})

    models = {k: m.model_copy(update={"source": fix(m.source)}) for k, m in reg.models.items()}
    return reg.model_copy(update={"models": models})


def shipped_registry_path() -> Path:
    """The registry.yaml inside the installed package (or at the top of a source checkout)."""
    packaged = resources.files("priorswap") / "registry.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "registry.yaml"


def user_registry_paths(extra: list[str] | tuple[str, ...] = ()) -> list[Path]:
    env = os.environ.get("PRIORSWAP_REGISTRY", "")
    return [Path(p) for p in env.split(os.pathsep) if p] + [Path(p) for p in extra]


class Registry:
    """Merged view of several registry files, remembering where each id and latent space came from."""

    def __init__(self, files: list[tuple[str, RegistryFile]], *, plugin_origins: frozenset[str] = frozenset(),
                 hint: str = "", labels: Mapping[str, str] | None = None) -> None:
        """`files`: (file, parsed) in load order; `labels` names files for `origin` (e.g. "shipped")."""
        self.latent_spaces: dict[str, LatentSpaceSpec] = {}
        self.models: dict[str, ModelEntry] = {}
        self.files: dict[str, str] = {}  # model id → the registry file its entry came from
        self.space_files: dict[str, str] = {}  # latent space → its file
        self.replaced: dict[str, list[str]] = {}  # model id → earlier files whose entry of that id it replaced
        self.replaced_spaces: dict[str, list[str]] = {}
        self.labels: dict[str, str] = dict(labels or {})
        self.skipped: list[tuple[str, str]] = []  # (plugin registry file, why), see Registry.load
        for origin, reg in files:
            for name, space in reg.latent_spaces.items():
                if name in self.space_files:
                    self.replaced_spaces.setdefault(name, []).append(self.space_files[name])
                self.latent_spaces[name], self.space_files[name] = space, origin
            for key, entry in reg.models.items():
                if key in self.files:
                    self.replaced.setdefault(key, []).append(self.files[key])
                self.models[key], self.files[key] = entry, origin
        for key, entry in list(self.models.items()):
            if isinstance(entry.latent_space, str) and entry.latent_space not in self.latent_spaces:
                close = difflib.get_close_matches(entry.latent_space, self.latent_spaces, n=3)
                message = (
                    f"{self.files[key]}: entry '{key}' in models, field 'latent_space': unknown latent "
                    f"space '{entry.latent_space}' (known: {', '.join(sorted(self.latent_spaces)) or 'none'})."
                    + (f" Did you mean {', '.join(close)}?" if close else "")
                    + " Latent spaces come from the shipped registry, the plugins' registry files and yours:"
                    " the plugin that defines it may not be loaded." + hint
                )
                if self.files[key] not in plugin_origins:
                    raise RegistryError(message)
                self._skip(self.files[key], message, f"the entry '{key}' is skipped")
                del self.models[key], self.files[key]
                self.replaced.pop(key, None)

    def origin(self, model_id: str) -> str:
        """Where the entry of `model_id` came from: "shipped", "plugin NAME", or the path of the user's file."""
        file = self.files[model_id]
        return self.labels.get(file, file)

    def overrides(self, model_id: str) -> list[str]:
        """The origins (as `origin` names them) of the entries of `model_id` that this one replaced, oldest first."""
        return [self.labels.get(f, f) for f in self.replaced.get(model_id, [])]

    def space_origin(self, name: str) -> str:
        """Where the latent space `name` came from (as `origin`)."""
        file = self.space_files[name]
        return self.labels.get(file, file)

    def space_overrides(self, name: str) -> list[str]:
        """The origins of the definitions of latent space `name` that this one replaced, oldest first."""
        return [self.labels.get(f, f) for f in self.replaced_spaces.get(name, [])]

    def _skip(self, origin: str, why: str, what: str) -> None:
        self.skipped.append((origin, why))
        warnings.warn(f"{why} ({what}: a plugin's registry file; see `priorswap doctor`)", PluginRegistryWarning,
                      stacklevel=3)

    @classmethod
    def load(cls, extra_files: list[str] | tuple[str, ...] = (), plugin_files: list[Path] = (),
             hint: str = "", plugin_names: Mapping[str, str] | None = None) -> Registry:
        """The shipped registry, then plugin files, then PRIORSWAP_REGISTRY and `extra_files`.

        A broken plugin file (or a plugin entry naming an unknown latent space) is skipped with a
        PluginRegistryWarning and listed in `skipped`; the shipped and the user's files must be valid.
        `hint` is added to errors about unknown latent spaces (e.g. which plugins failed to load).
        `plugin_names` maps a plugin file (as str) to the plugin that registered it, for `origin`."""
        shipped = shipped_registry_path()
        labels = {str(shipped): "shipped"}
        for path in plugin_files:
            name = (plugin_names or {}).get(str(path))
            labels[str(path)] = f"plugin {name}" if name else f"plugin file {path}"
        files, broken = [], []
        for path in [shipped, *plugin_files, *user_registry_paths(extra_files)]:
            try:
                files.append((str(path), parse_file(path)))
            except RegistryError as e:
                if path not in plugin_files:
                    raise
                broken.append((str(path), str(e)))
        registry = cls(files, plugin_origins=frozenset(map(str, plugin_files)), hint=hint, labels=labels)
        for origin, why in broken:
            registry._skip(origin, why, "the whole file is skipped")
        return registry

    def entry(self, model_id: str) -> ModelEntry:
        if model_id in self.models:
            return self.models[model_id]
        close = difflib.get_close_matches(model_id, self.models, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise RegistryError(
            f"unknown model id '{model_id}'.{hint} Run `priorswap list` for all ids, or pass a local folder path."
        )

    def latent_space(self, entry: ModelEntry) -> tuple[str, LatentSpaceSpec]:
        if isinstance(entry.latent_space, LatentSpaceSpec):
            return "inline", entry.latent_space
        return entry.latent_space, self.latent_spaces[entry.latent_space]

    def with_role(self, role: Role) -> dict[str, ModelEntry]:
        return {k: e for k, e in self.models.items() if role in e.roles}
