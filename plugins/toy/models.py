"""Network and scheduler configurations of the toy zoo, and the builders that initialise the
fine-tuned models from the base UNet (real diffusers classes throughout)."""

from __future__ import annotations

import copy

import torch

# ---- the UNet shared by the base prior and the three fine-tuned models ------------------------
UNET = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64, 64),  # 16×16, 8×8, 4×4; self-attention at 4×4
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "attention_head_dim": 32,
    "norm_num_groups": 16,
    "dropout": 0.0,
}

# ---- the tiny DiT prior: another architecture, schedule and parameterization -------------------
DIT = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "patch_size": 2,
    "num_layers": 4,
    "num_attention_heads": 4,
    "attention_head_dim": 24,
    "num_embeds_ada_norm": 1,  # one class (0); the class-dropout slot (1) is its null class
    "norm_num_groups": 32,
}

# ---- training schedules (saved as the models' scheduler configs) ------------------------------
LINEAR_EPS = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
}
COSINE_V = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": True,
    "clip_sample_range": 1.0,
}

# ---- condition encodings -----------------------------------------------------------------------
NUM_CLASSES = 10
CLASS_NULL = NUM_CLASSES  # class model: labels 0–9, null class 10
EDIT_NULL = 3  # edit model: instructions 0–2 (keep, shift, rotate), null instruction 3
ANGLE_OFFSET, ANGLE_SCALE = 500.0, 10.0  # view model: angle a (degrees) embedded as the "timestep" 500 + 10·a
ANGLE_NULL = 0.0  # the null angle, far outside [500 − 400, 500 + 400]


def angle_value(angle_deg: torch.Tensor | float) -> torch.Tensor:
    """The scalar the view UNet's sinusoidal angle embedding receives for an angle in degrees."""
    return ANGLE_OFFSET + ANGLE_SCALE * torch.as_tensor(angle_deg, dtype=torch.float32)


def scheduler(config: dict):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**config)


def base_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(**UNET)


def dit():
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(**DIT)


def finetune_unet(base, extra_in_channels: int = 0, num_class_embeds: int | None = None,
                  class_embed_type: str | None = None):
    """A UNet initialised from `base`: `extra_in_channels` concat channels appended to conv_in
    (their weights start at zero, as in InstructPix2Pix) and an optional class/angle embedding
    (new, with the diffusers default initialisation). Every base weight is copied."""
    from diffusers import UNet2DModel

    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    config.update(in_channels=base.config.in_channels + extra_in_channels,
                  num_class_embeds=num_class_embeds, class_embed_type=class_embed_type)
    model = UNet2DModel(**config)
    state = copy.deepcopy(base.state_dict())
    w = state["conv_in.weight"]
    if extra_in_channels:
        extra = torch.zeros(w.shape[0], extra_in_channels, *w.shape[2:], dtype=w.dtype)
        state["conv_in.weight"] = torch.cat([w, extra], dim=1)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("class_embedding") for k in missing):
        raise RuntimeError(f"base weights do not fit: missing {missing}, unexpected {unexpected}")
    return model


# ---- the one way each network is called (training and the denoisers share it) ------------------
def call_unet(net, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """`cond` may hold "image" (concatenated as extra input channels) and "class_labels" (class or
    instruction ids, or the encoded view angle); an empty condition is the unconditional base."""
    if "image" in cond:
        x = torch.cat([x, cond["image"].to(x.dtype)], dim=1)
    return net(x, t, class_labels=cond.get("class_labels")).sample


def call_dit(net, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    labels = cond.get("class_labels")
    if labels is None:
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return net(x, timestep=t, class_labels=labels).sample
