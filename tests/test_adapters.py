"""Adapters checked against exact answers: an analytic Gaussian denoiser seen through each adapter."""

import math

import torch
from diffusers import DDIMScheduler

from priorswap import Denoiser, DiscreteSchedule, LatentSpace, Route
from priorswap.adapters import FrameByFrame, LatentAffine, PairSpec, Resample, affine_bridge, plan_pair
from priorswap.parameterization import coefficients, convert_frame

CONFIG = dict(DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config)


class Gaussian(Denoiser):
    """The exact denoiser of data x0 ~ N(mu, s²) per element, as an ε-predicting network."""

    def __init__(self, mu: float, s: float, space: LatentSpace, parameterization="epsilon"):
        self.mu, self.s = mu, s
        self.latent_space = space
        self.parameterization = parameterization
        self.schedule = DiscreteSchedule.from_scheduler_config(CONFIG)
        self.scheduler_config = CONFIG
        self.calls = []

    def forward(self, x, t, cond):
        self.calls.append(tuple(x.shape))
        sigma = self.schedule.t_to_sigma(float(t[0]))
        a, b = coefficients("vp", sigma)
        x_ve = x / a
        x0 = (self.s**2 * x_ve + sigma**2 * self.mu) / (self.s**2 + sigma**2)
        if self.parameterization == "v_prediction":
            return (a * x - x0) / b
        return (x_ve - x0) / sigma

    def null_condition(self):
        return {}


def exact_x0(x_ve, sigma, mu, s):
    return (s**2 * x_ve + sigma**2 * mu) / (s**2 + sigma**2)


def test_latent_affine_is_exact_for_the_gaussian():
    """A prior trained on k·x0 + c, seen through the affine adapter, gives the model-space optimum."""
    model_space = LatentSpace("m", 4, scale=0.5, shift=0.1, family="vae")
    prior_space = LatentSpace("p", 4, scale=0.2, shift=-0.3, family="vae")
    adapter = affine_bridge(model_space, prior_space)
    assert isinstance(adapter, LatentAffine)
    k, c = adapter.k, adapter.c
    mu, s = 0.7, 1.3
    prior = Gaussian(k * mu + c, abs(k) * s, prior_space)
    route = Route(prior, (adapter,), match="continuous")
    x_ve = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    for t in (10.0, 400.0, 900.0):
        sigma = prior.schedule.t_to_sigma(t) / k  # keep kσ inside the prior's table
        x_vp = convert_frame(x_ve, sigma, "ve", "vp")
        x0 = route.predict(x_vp, sigma, torch.tensor(t), {})
        torch.testing.assert_close(x0, exact_x0(x_ve, sigma, mu, s), rtol=1e-4, atol=1e-5)


def test_v_prior_through_sigma_matching_is_exact():
    """A v-predicting prior on its own schedule, queried at the model's σ (continuous matching)."""
    prior = Gaussian(0.2, 0.9, LatentSpace("m", 4), parameterization="v_prediction")
    route = Route(prior, match="continuous")
    x_ve = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    for sigma in (0.05, 1.0, 7.3):
        x0 = route.predict(convert_frame(x_ve, sigma, "ve", "vp"), sigma, torch.tensor(0.0), {})
        torch.testing.assert_close(x0, exact_x0(x_ve, sigma, 0.2, 0.9), rtol=1e-3, atol=1e-4)


def test_frame_by_frame_and_resample():
    prior = Gaussian(0.0, 1.0, LatentSpace("m", 4))
    video = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64)
    route = Route(prior, (FrameByFrame(),), match="continuous")
    x0 = route.predict(video, 2.0, torch.tensor(0.0), {})
    assert x0.shape == video.shape and prior.calls[-1] == (6, 4, 8, 8)
    frames = video.permute(0, 2, 1, 3, 4).reshape(6, 4, 8, 8)
    per_frame = Route(prior, match="continuous").predict(frames, 2.0, torch.tensor(0.0), {})
    torch.testing.assert_close(x0, per_frame.reshape(2, 3, 4, 8, 8).permute(0, 2, 1, 3, 4))
    small = Route(prior, (Resample(4),), match="continuous").predict(frames, 2.0, torch.tensor(0.0), {})
    assert small.shape == frames.shape and prior.calls[-1] == (6, 4, 4, 4)


def test_planner_orders_and_refuses():
    sd = LatentSpace("sd", 4, 0.18215, family="sd-kl-f8")
    video = PairSpec("v", sd, "a", "epsilon", modality="video")
    image = PairSpec("i", sd, "b", "v_prediction", resolution=512, fixed_size=True, learned_sigma=True)
    plan = plan_pair(video, image)
    assert [a.name for a in plan.adapters] == ["frame-by-frame", "resample"]
    assert "parameterization: prior's v_prediction → x̂0 → model's epsilon" in plan.lines()
    assert "σ-matching (continuous): model's a → prior's b" in plan.lines()
    assert not plan_pair(image, video).ok
    assert math.isclose(affine_bridge(sd, LatentSpace("h", 4, 0.091075, family="sd-kl-f8")).k, 0.5)


def test_the_same_space_under_another_name_needs_no_adapter():
    sd = LatentSpace("sd", 4, 0.18215, family="sd-kl-f8")
    inline = LatentSpace("my-folder", 4, 0.18215, family="sd-kl-f8")  # what describe() gives a local folder
    plan = plan_pair(PairSpec("m", inline, "a", "epsilon"), PairSpec("p", sd, "a", "epsilon"))
    assert plan.ok and plan.adapters == []
    other_scale = LatentSpace("x", 4, 0.13025, family="sd-kl-f8")
    assert [a.name for a in plan_pair(PairSpec("m", inline, "a", "epsilon"),
                                      PairSpec("p", other_scale, "a", "epsilon")).adapters] == ["latent-affine"]


def test_a_bridge_that_raises_is_skipped_and_named():
    def broken(model_space, prior_space):
        raise RuntimeError("bridge exploded")

    def working(model_space, prior_space):
        return LatentAffine(1.0, 0.0)

    a, b = LatentSpace("a", 4, family="ae-1"), LatentSpace("b", 3, family="ae-2")
    plan = plan_pair(PairSpec("m", a, "s", "epsilon"), PairSpec("p", b, "s", "epsilon"), [broken, working])
    assert plan.ok and [x.name for x in plan.adapters] == ["latent-affine"]
    assert any("broken raised RuntimeError: bridge exploded" in line for line in plan.notes)
    refused = plan_pair(PairSpec("m", a, "s", "epsilon"), PairSpec("p", b, "s", "epsilon"), [broken])
    assert not refused.ok and "bridges that failed: broken raised RuntimeError" in refused.reason
