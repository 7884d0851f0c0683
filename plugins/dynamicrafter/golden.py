"""`priorswap check-golden` for the DynamiCrafter / VideoCrafter2 network fixtures.

Per fixture folder (format: shared fixtures README): (a) the full-size networks of `manifest-full.json`
are built on the meta device and their prefixed state_dict must have exactly the manifest's keys and
shapes; (b) the tiny networks of `config.json` load `weights.safetensors` strictly and reproduce the
tensors of `fixture["compare"]` from the inputs in `io.safetensors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from priorswap.configs import read_json
from priorswap.errors import PriorswapError
from priorswap.golden import Produced, read_inputs

from .attention import TEXT_CONTEXT_LEN
from .convert import split_checkpoint
from .resampler import Resampler
from .unet3d import UNet3D

UNET_PREFIX = "model.diffusion_model."
RESAMPLER_PREFIX = "image_proj_model."
SHOWN = 5  # keys listed per kind of mismatch


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise PriorswapError(f"{path} is missing: a DynamiCrafter network fixture needs it")
    return read_json(path)


def build_networks(config: dict) -> tuple[UNet3D, Resampler | None]:
    """The UNet and (when configured) the Resampler from `unet_config` / `image_proj_stage_config`."""
    unet = UNet3D(**config["unet_config"]["params"])
    proj = config.get("image_proj_stage_config")
    return unet, (Resampler(**proj["params"]) if proj else None)


def prefixed_shapes(unet: UNet3D, resampler: Resampler | None) -> dict[str, list[int]]:
    """state_dict key → shape, with the released checkpoints' prefixes, in state_dict order."""
    shapes = {UNET_PREFIX + k: list(v.shape) for k, v in unet.state_dict().items()}
    if resampler is not None:
        shapes.update({RESAMPLER_PREFIX + k: list(v.shape) for k, v in resampler.state_dict().items()})
    return shapes


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (f" … ({len(keys)} in all)" if len(keys) > SHOWN else "")


def full_size_check(manifest: dict) -> tuple[str, bool, str]:
    """Build the full-size networks on the meta device and compare keys and shapes with the manifest."""
    with torch.device("meta"):
        unet, resampler = build_networks(manifest)
    mine = prefixed_shapes(unet, resampler)
    ref = {k: list(v) for k, v in manifest["tensors"].items()}
    missing = [k for k in ref if k not in mine]
    unexpected = [k for k in mine if k not in ref]
    shaped = [f"{k} {mine[k]} vs {ref[k]}" for k in ref if k in mine and mine[k] != ref[k]]
    name = "full-size state_dict keys and shapes"
    if missing or unexpected or shaped:
        parts = [f"{label}: {_listed(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)) if keys]
        return name, False, "; ".join(parts)
    params = sum(p.numel() for p in unet.parameters())
    params += sum(p.numel() for p in resampler.parameters()) if resampler is not None else 0
    order = "same order" if list(mine) == list(ref) else "other order"
    expected = manifest.get("param_counts", {}).get("total")
    if expected is not None and params != expected:
        return name, False, f"{len(mine)} tensors match but {params:,} parameters vs {expected:,}"
    return name, True, f"{len(mine)} tensors, {params:,} parameters, {order}"


def load_tiny(folder: Path, fixture: dict, config: dict) -> tuple[UNet3D, Resampler | None]:
    """The tiny networks with the fixture's weights loaded strictly, in eval mode, float32."""
    unet, resampler = build_networks(config)
    parts = split_checkpoint(load_file(folder / fixture.get("weights", "weights.safetensors")))
    unet.load_state_dict(parts.get("unet", {}), strict=True)
    if resampler is not None:
        resampler.load_state_dict(parts.get("image_proj", {}), strict=True)
    elif "image_proj" in parts:
        raise PriorswapError(f"{folder}: weights hold an image_proj_model but config.json configures none")
    return unet.float().eval(), (resampler.float().eval() if resampler is not None else None)


def run_fixture(unet: UNet3D, resampler: Resampler | None, io: dict[str, torch.Tensor],
                wanted: set[str]) -> tuple[dict[str, torch.Tensor], list[tuple[str, bool, str]]]:
    """The tensors named in `wanted` (and a context-composition check) from the fixture's inputs; `io` is
    `priorswap.golden.read_inputs` (a missing input is an error naming it). The fs input is `fs` (DynamiCrafter)
    or `fps` (VideoCrafter2, whose UNet has no image cross-attention); the `*_default_fs` outputs run without it."""
    fs_name = "fs" if unet.image_cross_attention else "fps"
    produced: dict[str, torch.Tensor] = {}
    checks: list[tuple[str, bool, str]] = []
    with torch.no_grad():
        if resampler is not None and ("image_tokens" in wanted or "clip_image_embeds" in io):
            tokens = resampler(io["clip_image_embeds"])
            produced["image_tokens"] = tokens
            if "context" in io and "text_context" in io:
                composed = torch.cat([io["text_context"], tokens], dim=1)
                ok = composed.shape == io["context"].shape and torch.allclose(composed, io["context"], 1e-4, 1e-4)
                checks.append(("context = text tokens + image tokens", ok,
                               f"{TEXT_CONTEXT_LEN} text + {tokens.shape[1]} image tokens"))
        call = {"timesteps": io["timesteps"], "context": io["context"]}
        if "output" in wanted:
            produced["output"] = unet(io["unet_input"], fs=io[fs_name], **call)
        for default in ("output_default_fs", "output_default_fps"):
            if default in wanted:
                produced[default] = unet(io["unet_input"], **call)
        if "fallback_output" in wanted:
            produced["fallback_output"] = unet(io["fallback_unet_input"], fs=io[fs_name], **call)
    return produced, checks


def check(folder: Path, fixture: dict[str, Any]) -> Produced:
    """The golden checker registered for the `dynamicrafter` and `videocrafter` families."""
    folder = Path(folder)
    if fixture.get("kind", "network") != "network":
        raise PriorswapError(f"{folder}: only 'network' fixtures are checked by the dynamicrafter plugin, "
                             f"got kind '{fixture.get('kind')}'")
    config = _read_json(folder / fixture.get("config", "config.json"))
    checks = [full_size_check(_read_json(folder / "manifest-full.json"))]
    unet, resampler = load_tiny(folder, fixture, config)
    produced, more = run_fixture(unet, resampler, read_inputs(folder), set(fixture["compare"]))
    return Produced(produced, checks + more)
