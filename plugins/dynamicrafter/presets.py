"""Diffusion settings of the released DynamiCrafter / VideoCrafter2 checkpoints (no torch import).

Each preset gives the diffusers DDIMScheduler config that reproduces the official sampler's grid
(`uniform` = leading + steps_offset 1: 1, 21, …, 981; `uniform_trailing` = trailing: 19, …, 999; the
last step goes to ᾱ_0 as in the official `ddim_alphas_prev`), and the lvdm settings a folder keeps in
`scheduler/lvdm_config.json`: the per-timestep latent rescaling, the fs/fps default, the frame count and
the pixel size. Values: shared/fixtures/dynamicrafter/*/README.md and the official inference configs.
"""

from __future__ import annotations

LVDM_CONFIG = "lvdm_config.json"

_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
_COMMON = {"_class_name": "DDIMScheduler", **_BETAS, "clip_sample": False, "set_alpha_to_one": False}
EPS_UNIFORM = {**_COMMON, "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 1}
V_ZTSNR_TRAILING = {
    **_COMMON,
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
    "steps_offset": 0,
    "rescale_betas_zero_snr": True,
}


def _dc(base_scale: float | None, fs: int, height: int, width: int, fs_meaning: str) -> dict:
    return {
        "family": "dynamicrafter",
        # "dynamic": DynamiCrafter's use_dynamic_rescale (x̂0 · s[t_prev]/s[t], last step 1);
        # "use_scale": VideoCrafter2's use_scale (x̂0 / s[t], x_prev with s[t_prev], s[0] = 1 at the end)
        "latent_rescale": None if base_scale is None else "dynamic",
        "base_scale": base_scale,
        "default_fs": fs,
        "fs_meaning": fs_meaning,
        "frames": 16,
        "height": height,
        "width": width,
        "guidance_rescale": 0.0 if base_scale is None else 0.7,
        "text_layer": "penultimate",
    }


# `sample` defaults: the official scripts' DDIM with ddim_eta 1.0, 50 steps, γT / γI
RECOMMENDED = {
    "dynamicrafter": {"steps": 50, "guidance": 7.5, "image_guidance": 1.5, "scheduler": "ddim", "eta": 1.0},
    "videocrafter": {"steps": 50, "guidance": 12.0, "scheduler": "ddim", "eta": 1.0},
}

PRESETS: dict[str, dict] = {
    "dynamicrafter-256": {"scheduler": EPS_UNIFORM, "lvdm": _dc(None, 3, 256, 256, "frame_stride")},
    "dynamicrafter-512": {"scheduler": V_ZTSNR_TRAILING, "lvdm": _dc(0.7, 24, 320, 512, "fps")},
    "dynamicrafter-1024": {"scheduler": V_ZTSNR_TRAILING, "lvdm": _dc(0.3, 10, 576, 1024, "fps")},
    "dynamicrafter-512-interp": {
        "scheduler": V_ZTSNR_TRAILING,
        "lvdm": {**_dc(0.7, 5, 320, 512, "fps"), "interpolation": True},
    },
    "videocrafter2": {
        "scheduler": EPS_UNIFORM,
        "lvdm": {
            "family": "videocrafter",
            "latent_rescale": "use_scale",
            "base_scale": 0.7,
            "default_fs": 16,
            "fs_meaning": "fps",
            "frames": 16,
            "height": 320,
            "width": 512,
            "guidance_rescale": 0.0,
            "text_layer": "penultimate",
        },
    },
}


# Full-size network configs (the `params` of the official yamls; checked against the fixtures' manifests).
UNET_FULL = {
    "in_channels": 8, "out_channels": 4, "model_channels": 320, "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "dropout": 0.1, "num_head_channels": 64,
    "transformer_depth": 1, "context_dim": 1024, "use_linear": True, "use_checkpoint": True, "temporal_conv": True,
    "temporal_attention": True, "temporal_selfatt_only": True, "use_relative_position": False,
    "use_causal_attention": False, "temporal_length": 16, "addition_attention": True, "image_cross_attention": True,
    "default_fs": 24, "fs_condition": True,
}
VC2_UNET_FULL = {k: v for k, v in UNET_FULL.items()
                 if k not in ("image_cross_attention", "default_fs", "fs_condition", "dropout")}
VC2_UNET_FULL.update(in_channels=4, fps_cond=True)
RESAMPLER_FULL = {"dim": 1024, "depth": 4, "dim_head": 64, "heads": 12, "num_queries": 16, "embedding_dim": 1280,
                  "output_dim": 1024, "ff_mult": 4, "video_length": 16}
NETWORKS = {
    "dynamicrafter-256": {**UNET_FULL, "default_fs": 3, "image_cross_attention_scale_learnable": True},
    "dynamicrafter-512": UNET_FULL,
    "dynamicrafter-1024": {**UNET_FULL, "default_fs": 10},
    "dynamicrafter-512-interp": UNET_FULL,
    "videocrafter2": VC2_UNET_FULL,
}
# OpenCLIP ViT-H/14 (laion2b_s32b_b79k) in transformers' config terms
OPENCLIP_TEXT = {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                 "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
                 "projection_dim": 1024}
OPENCLIP_VISION = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
                   "image_size": 224, "patch_size": 14, "hidden_act": "gelu", "projection_dim": 1024}
SD_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
          "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
          "layers_per_block": 2, "sample_size": 256, "scaling_factor": 0.18215}
