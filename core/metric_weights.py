"""Weights of the metric networks (LPIPS' AlexNet, FID's Inception).

They are looked up in the torch hub cache, where torchvision and torch-fidelity put the same files, so a
machine that already has them reuses them; online and opted in, they are downloaded there. Both are
pickles: they are read under the core's rule (`hub.load_state_dict`: opted in once with
`torch.load(weights_only=True)`, then from a safetensors copy in priorswap's cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import MetricUnavailable, WeightsUnavailable
from .hub import has_safetensors_copy, load_state_dict


@dataclass(frozen=True)
class MetricWeights:
    """A published weights file: what it is (for messages), where it is, and the sha256 prefix its file name
    carries (torchvision's convention; checked on download) when it has one."""

    what: str
    url: str
    sha256_prefix: str | None = None

    @property
    def filename(self) -> str:
        return os.path.basename(self.url)


def torch_hub_checkpoints() -> Path:
    """The folder torch.hub (and torchvision) caches downloaded checkpoints in ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_metric_weights(spec: MetricWeights, *, offline: bool, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The tensors of `spec`: from the torch hub cache, downloaded there first when online and opted in.
    Raises MetricUnavailable with what to do when they cannot be had."""
    file = torch_hub_checkpoints() / spec.filename
    if not file.is_file():
        if offline:
            then = "" if allow_pickle else (", then run with --allow-pickle (it is a pickle: read once with "
                                            "torch.load(weights_only=True) and kept as safetensors)")
            raise MetricUnavailable(
                f"{spec.what}: {spec.filename} is not in the torch hub cache ({file.parent}) and offline mode is "
                f"on; download {spec.url} there{then}"
            )
        if not allow_pickle:
            raise MetricUnavailable(
                f"{spec.what}: {spec.url} is a pickle; pass --allow-pickle to download it and read it once with "
                "torch.load(weights_only=True) (priorswap keeps a safetensors copy for later runs)"
            )
        _download(spec, file)
    return _read(file, spec.what, f"delete it and run again with --allow-pickle, or download {spec.url} there",
                 allow_pickle)


def weights_state(spec: MetricWeights, packaged: tuple[Path, ...] = ()) -> tuple[bool, str]:
    """(ready without an opt-in, a line saying where the weights stand) for `priorswap doctor`;
    `packaged`: pickled files from installed packages the metric also needs."""
    file = torch_hub_checkpoints() / spec.filename
    if not file.is_file():
        return False, f"not cached: the first run with --allow-pickle downloads {spec.url} into {file.parent}"
    pending = [p for p in (file, *packaged) if not has_safetensors_copy(p)]
    if pending:
        return False, (f"cached as pickles ({', '.join(map(str, pending))}): the first run with --allow-pickle "
                       "reads them once")
    return True, f"ready ({file}, safetensors copies in the cache)"


def load_packaged_weights(file: Path, what: str, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The tensors of a weights file shipped inside an installed package (same pickle rule)."""
    if not file.is_file():
        raise MetricUnavailable(f"{what}: {file} is missing; reinstall the package that ships it")
    return _read(file, what, "reinstall the package that ships it", allow_pickle)


def _read(file: Path, what: str, remedy: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    try:
        return load_state_dict(file, allow_pickle=allow_pickle)
    except WeightsUnavailable as e:
        raise MetricUnavailable(f"{what}: {e}") from None
    except Exception as e:  # a truncated or foreign file: the metric is skipped, the evaluation goes on
        raise MetricUnavailable(f"{what}: {file} could not be read ({type(e).__name__}: {e}); {remedy}") from None


def check_loaded(what: str, load: Callable[[], object], source: str) -> None:
    """Run `load` (putting tensors into a network); a mismatch becomes MetricUnavailable naming `source`."""
    try:
        load()
    except Exception as e:
        raise MetricUnavailable(f"{what}: {source} does not fit the network ({type(e).__name__}: {e}); "
                                "delete it and run again with --allow-pickle") from None


def _download(spec: MetricWeights, file: Path) -> None:
    """Download to a temporary name, check the hash prefix, then move into place (no partial file)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(file), hash_prefix=spec.sha256_prefix, progress=True)
    except Exception as e:
        raise MetricUnavailable(
            f"{spec.what}: could not download {spec.url} ({type(e).__name__}: {e}); put the file in {file.parent}"
        ) from None
