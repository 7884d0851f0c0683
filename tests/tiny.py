"""Tiny random models built from the real diffusers/transformers classes and saved like hub repos."""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = ["<|startoftext|>", "<|endoftext|>", "a</w>", "cat</w>", "dog</w>", "photo</w>", "of</w>", "!</w>"]


def tiny_vae(scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=scaling_factor,
    )


def make_dit_folder(
    path: Path,
    seed: int = 0,
    sample_size: int = 8,
    beta_schedule: str = "linear",
    prediction_type: str = "epsilon",
    heads: int = 2,
    head_dim: int = 8,
    layers: int = 2,
    noise: float = 0.05,
) -> Path:
    """A DiTPipeline folder (transformer, scheduler, vae) with random weights, safetensors."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,
        num_layers=layers,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_num_groups=4,
    )
    # DiT initialises the adaLN-zero modulation to zero; randomise it so outputs depend on inputs.
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(noise * torch.randn_like(p))
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule=beta_schedule,
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type=prediction_type,
    )
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=scheduler)
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def make_tokenizer(path: Path):
    from transformers import CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=8)


def make_sd_folder(path: Path, seed: int = 1, beta_schedule: str = "scaled_linear",
                   prediction_type: str = "epsilon") -> Path:
    """A StableDiffusionPipeline folder with a tiny UNet, CLIP text encoder and tokenizer."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    tokenizer = make_tokenizer(Path(path) / "_tok")
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule=beta_schedule, steps_offset=1,
        skip_prk_steps=True, prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and batch-norm statistics, scaled so activations stay O(1) through the depth."""
    g = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            continue
        if name.endswith(("running_var", "bn.weight")):
            tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
        elif name.endswith(("running_mean", "bias")):
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)
        else:
            fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
            tensor.copy_(torch.randn(tensor.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return module.eval()


def write_metric_weights(torch_home: Path, seed: int = 0) -> Path:
    """Random stand-ins for the published LPIPS AlexNet and FID Inception files, pickled under the names
    and in the torch hub folder where torchvision / torch-fidelity keep them. Returns that folder."""
    from priorswap.fid_inception import INCEPTION, FidInception
    from priorswap.lpips_alexnet import ALEXNET, alexnet_features

    hub = torch_home / "hub" / "checkpoints"
    hub.mkdir(parents=True, exist_ok=True)
    trunk = randomise(alexnet_features(), seed).state_dict()
    torch.save({f"features.{k}": v for k, v in trunk.items()}, hub / ALEXNET.filename)
    torch.save(randomise(FidInception(), seed + 1).state_dict(), hub / INCEPTION.filename)
    return hub
