"""DDIM's stochastic step (η > 0) for diffusers' DDIMScheduler, safe at a zero-terminal-SNR start.

`DDIMScheduler.step` computes the direction term as (1 − ᾱ_prev − σ_t²)^½ · ε̂. With a zero-terminal-SNR
schedule ᾱ_t = 0 at the first step (t = 999), and with η = 1 that quantity is exactly zero, but σ_t² is
computed as (√variance)² and lands one rounding step above 1 − ᾱ_prev: the square root of a negative
number, and every latent turns NaN (DynamiCrafter 512/1024 sample with η = 1 on such a schedule); on
other CPUs it lands just above and leaves a stray ~1e-4·ε̂. This is the same step, the same noise draw
(`randn_tensor` on the generator, as diffusers), with that weight computed as (1 − ᾱ_prev)·(1 − η²·r), which
is exactly zero there, and clamped at zero.
"""

from __future__ import annotations

import torch


def ddim_step(
    sched, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float, generator: torch.Generator | None
) -> torch.Tensor:
    """x_{t_prev} of DDIM (Song et al. 2021, eq. 12) with stochasticity η, as DDIMScheduler.step."""
    from diffusers.utils.torch_utils import randn_tensor

    config = sched.config
    if config.thresholding:
        raise ValueError("dynamic thresholding with eta > 0 is not supported; use eta=0")
    t = int(timestep)
    prev_t = t - config.num_train_timesteps // sched.num_inference_steps
    a_t = sched.alphas_cumprod[t]
    a_prev = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
    b_t = 1 - a_t
    if config.prediction_type == "epsilon":
        x0 = (sample - b_t ** 0.5 * model_output) / a_t ** 0.5
        eps = model_output
    elif config.prediction_type == "sample":
        x0 = model_output
        eps = (sample - a_t ** 0.5 * x0) / b_t ** 0.5
    elif config.prediction_type == "v_prediction":
        x0 = a_t ** 0.5 * sample - b_t ** 0.5 * model_output
        eps = a_t ** 0.5 * model_output + b_t ** 0.5 * sample
    else:
        raise ValueError(f"unknown prediction_type {config.prediction_type!r}")
    if config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    # σ_t² = η²·(1 − ᾱ_prev)·r with r = (1 − ᾱ_t/ᾱ_prev)/(1 − ᾱ_t), so the direction weight
    # 1 − ᾱ_prev − σ_t² = (1 − ᾱ_prev)·(1 − η²·r): exactly 0 at ᾱ_t = 0, η = 1 on any CPU (r = 1), where
    # subtracting the squared square root leaves a rounding residue of either sign.
    r = (1 - a_t / a_prev) / b_t
    std = eta * ((1 - a_prev) * r) ** 0.5
    direction = ((1 - a_prev) * (1 - eta ** 2 * r)).clamp(min=0) ** 0.5 * eps
    prev = a_prev ** 0.5 * x0 + direction
    noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                         dtype=model_output.dtype)
    return prev + std * noise
