"""The engine's stochastic DDIM step: diffusers' DDIMScheduler.step, NaN-free at a zero-terminal-SNR start."""

import pytest
import torch
from diffusers import DDIMScheduler

from priorswap.ddim import ddim_step

COMMON = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False,
          "set_alpha_to_one": False}


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_matches_diffusers_step_with_the_same_noise(prediction, eta):
    sched = DDIMScheduler(**COMMON, prediction_type=prediction, timestep_spacing="leading", steps_offset=1)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in sched.timesteps[:3]:
        ours = ddim_step(sched, out, t, x, eta, torch.Generator().manual_seed(1))
        theirs = sched.step(out, t, x, eta=eta, generator=torch.Generator().manual_seed(1)).prev_sample
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_a_zero_terminal_snr_start_with_eta_one_is_finite_and_exact():
    """At t = 999 of a zero-SNR schedule ᾱ_t = 0, so with η = 1 the direction term vanishes and
    x_prev = √ᾱ_prev · x̂0 + √(1 − ᾱ_prev) · z (the official DynamiCrafter sampler computes exactly this)."""
    sched = DDIMScheduler(**COMMON, prediction_type="v_prediction", timestep_spacing="trailing",
                          rescale_betas_zero_snr=True)
    sched.set_timesteps(50)
    t = sched.timesteps[0]
    assert int(t) == 999 and float(sched.alphas_cumprod[999]) == 0.0
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    ours = ddim_step(sched, v, t, x, 1.0, torch.Generator().manual_seed(1))
    a_prev = sched.alphas_cumprod[int(t) - 20]
    x0 = -v  # v-prediction at ᾱ = 0: x̂0 = √ᾱ·x − √(1−ᾱ)·v
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * z, atol=1e-6, rtol=1e-6)
