"""Full-size random model folders for bench/memory.py and bench/step_time.py (no download).

Two diffusers-layout folders are built from the real diffusers/transformers classes with their default
random initialisation and saved with safetensors:

- `zero123/`: a Zero-1-to-3-shaped model, laid out as kxic/zero123-xl is: unet/ (UNet2DConditionModel,
  SD 1.x shape with 8 input channels and 768-dim cross-attention, sample size 32), vae/ (the SD
  AutoencoderKL), image_encoder/ (CLIPVisionModelWithProjection, ViT-L/14), cc_projection/
  (Linear 772 → 768 under projection.weight/bias), scheduler/ (DDIM), feature_extractor/.
- `sd21/`: a Stable Diffusion 2.1-base-shaped StableDiffusionPipeline folder: unet/ (4 channels,
  1024-dim cross-attention, linear projections, sample size 64), text_encoder/ (OpenCLIP-H text tower
  as CLIPTextModel), tokenizer/ (a small stand-in vocabulary), vae/, scheduler/ (PNDM).

`tiny=True` builds the same layout with tiny configs (16-pixel images), so the scripts can be smoke-tested
in seconds. Folders are cached under a work directory, keyed by size and dtype, and rebuilt only when
missing or incomplete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
VOCAB = ["<|startoftext|>", "<|endoftext|>", "a</w>", "photo</w>", "of</w>", "an</w>", "object</w>", "!</w>"]

CROSS_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
CROSS_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")

# Full size: the published configs' shapes (kxic/zero123-xl, stabilityai/stable-diffusion-2-1-base).
FULL: dict[str, dict[str, Any]] = {
    "model_unet": dict(
        sample_size=32, in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=CROSS_DOWN, up_block_types=CROSS_UP, cross_attention_dim=768, attention_head_dim=8,
    ),
    "prior_unet": dict(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=CROSS_DOWN, up_block_types=CROSS_UP, cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    ),
    "vae": dict(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
        sample_size=256, scaling_factor=0.18215,
    ),
    "vision": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
        image_size=224, projection_dim=768, hidden_act="quick_gelu",
    ),
    "text": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=512, vocab_size=49408,
    ),
}

TINY: dict[str, dict[str, Any]] = {
    "model_unet": dict(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    ),
    "prior_unet": dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4, use_linear_projection=True,
    ),
    "vae": dict(
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
        scaling_factor=0.18215,
    ),
    "vision": dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=32,
        image_size=224, projection_dim=12,
    ),
    "text": dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
        vocab_size=len(VOCAB),
    ),
}

SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
POSE_DIM = 4  # Zero-1-to-3's camera vector: polar, sin azimuth, cos azimuth, radius


def sizes(tiny: bool) -> dict[str, dict[str, Any]]:
    return TINY if tiny else FULL


def resolution(tiny: bool) -> int:
    """The model's image size in pixels: UNet sample size × the VAE's downsampling."""
    cfg = sizes(tiny)
    return cfg["model_unet"]["sample_size"] * 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)


def _vae(cfg: dict[str, Any]):
    from diffusers import AutoencoderKL

    n = len(cfg["block_out_channels"])
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, **cfg,
    )


def _tokenizer(path: Path, max_length: int):
    """A CLIPTokenizer with a small stand-in vocabulary (the text encoder's weights are random anyway)."""
    from transformers import CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=max_length)


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return module.to(dtype).eval()


def build_model_folder(path: Path, tiny: bool = False, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """A Zero-1-to-3-shaped folder in the kxic/zero123-* layout (random weights, safetensors, `dtype`).

    Components are built, saved and freed one at a time, so the peak is the largest component."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from priorswap.plugins.zero123 import MODEL_INDEX

    cfg = sizes(tiny)
    path = Path(path)
    torch.manual_seed(seed)
    unet = _cast(UNet2DConditionModel(**cfg["model_unet"]), dtype)
    unet.save_pretrained(path / "unet", safe_serialization=True)
    del unet
    torch.manual_seed(seed + 1)
    _cast(_vae(cfg["vae"]), dtype).save_pretrained(path / "vae", safe_serialization=True)
    torch.manual_seed(seed + 2)
    encoder = _cast(CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["vision"])), dtype)
    encoder.save_pretrained(path / "image_encoder", safe_serialization=True)
    del encoder
    torch.manual_seed(seed + 3)
    n_in, n_out = cfg["vision"]["projection_dim"] + POSE_DIM, cfg["model_unet"]["cross_attention_dim"]
    cc = torch.nn.Linear(n_in, n_out).to(dtype)
    (path / "cc_projection").mkdir(parents=True, exist_ok=True)
    save_file({"projection.weight": cc.weight.detach().contiguous(), "projection.bias": cc.bias.detach()},
              path / "cc_projection" / "diffusion_pytorch_model.safetensors")
    (path / "cc_projection" / "config.json").write_text(
        json.dumps({"_class_name": "CCProjection", "in_channel": n_in, "out_channel": n_out}))
    DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **SCHEDULE).save_pretrained(path / "scheduler")
    CLIPImageProcessor().save_pretrained(path / "feature_extractor")
    (path / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return path


def build_prior_folder(path: Path, tiny: bool = False, dtype: torch.dtype = torch.float32, seed: int = 10) -> Path:
    """A Stable Diffusion 2.1-base-shaped StableDiffusionPipeline folder (random weights, safetensors, `dtype`)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = sizes(tiny)
    path = Path(path)
    torch.manual_seed(seed)
    unet = _cast(UNet2DConditionModel(**cfg["prior_unet"]), dtype)
    torch.manual_seed(seed + 1)
    vae = _cast(_vae(cfg["vae"]), dtype)
    torch.manual_seed(seed + 2)
    text = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **cfg["text"])
    text_encoder = _cast(CLIPTextModel(text), dtype)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp), cfg["text"]["max_position_embeddings"])
        scheduler = PNDMScheduler(skip_prk_steps=True, **SCHEDULE)
        pipe = StableDiffusionPipeline(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(path, safe_serialization=True)
    return path


def write_source_image(path: Path, size: int, seed: int = 0) -> Path:
    """A random RGB PNG of `size`×`size` pixels (the novel-view task's source image)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return path


def _ensure(folder: Path, build, **kwargs: Any) -> Path:
    """Builds `folder` unless a previous build completed (marked by `.complete`); returns it."""
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    build(folder, **kwargs)
    marker.write_text("ok\n")
    return folder


def ensure_folders(
    work: Path, tiny: bool = False, dtype: str = "float32", log=print, in_subprocess: bool = True
) -> dict[str, Path]:
    """The model and prior folders and a source image under `work`, built when missing.

    The build runs in a subprocess by default, so that the caller's memory (and the peak memory its
    own children inherit in ru_maxrss) stays small. Returns {"model", "prior", "image", "cache"} paths
    (cache: a folder for PRIORSWAP_CACHE)."""
    root = Path(work) / f"{'tiny' if tiny else 'full'}-{dtype}"
    paths = {"model": root / "zero123", "prior": root / "sd21", "image": root / "source.png", "cache": root / "cache"}
    done = all((paths[k] / ".complete").is_file() for k in ("model", "prior")) and paths["image"].is_file()
    if done:
        return paths
    if in_subprocess:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--dtype", dtype]
        subprocess.run(cmd + (["--tiny"] if tiny else []), check=True)
        return paths
    root.mkdir(parents=True, exist_ok=True)
    for name, build in (("model", build_model_folder), ("prior", build_prior_folder)):
        if not (paths[name] / ".complete").is_file():
            log(f"building the {'tiny' if tiny else 'full-size'} {name} folder {paths[name]} ({dtype}) ...", flush=True)
        _ensure(paths[name], build, tiny=tiny, dtype=DTYPES[dtype])
    if not paths["image"].is_file():
        write_source_image(paths["image"], resolution(tiny))
    return paths


@contextlib.contextmanager
def work_dir(path: str | None) -> Iterator[Path]:
    """`path` (created, kept) or a temporary directory removed on exit."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="priorswap-bench-") as tmp:
        yield Path(tmp)


def param_bytes(module: torch.nn.Module | None) -> int:
    """Bytes of a module's parameters and buffers (0 for None)."""
    if module is None:
        return 0
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Builds (or finds) the bench's random model folders under --work.")
    parser.add_argument("--work", required=True, help="folder that keeps the built folders")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--tiny", action="store_true", help="tiny configs")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    start = time.perf_counter()
    paths = ensure_folders(Path(args.work), tiny=args.tiny, dtype=args.dtype, in_subprocess=False)
    print(f"folders ready in {time.perf_counter() - start:.0f} s: {paths['model']}, {paths['prior']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
