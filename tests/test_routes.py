"""Routes: which timestep each denoiser is told and at which σ its output becomes x̂0; a hand-built Sampler
refuses a route that would feed a prior the model's timesteps on another schedule."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from priorswap import Denoiser, DiscreteSchedule, FlowSchedule, LatentSpace
from priorswap.adapters import LatentAffine
from priorswap.engine import Route, Sampler
from priorswap.guidance import prior_swap


class Zero(Denoiser):
    def __init__(self, beta_schedule):
        self.latent_space = LatentSpace("toy", channels=1, downsample=1)
        self.scheduler_config = dict(DDIMScheduler(beta_schedule=beta_schedule).config)
        self.schedule = DiscreteSchedule.from_scheduler_config(self.scheduler_config)
        self.resolution = 4

    def forward(self, x, t, cond):
        return torch.zeros_like(x)

    def null_condition(self):
        return {}


def sampler(model, prior, match):
    routes = {"model": Route(model), "prior": Route(prior, match=match)}
    conditions = {("model", "full"): {}, ("model", "null"): {}, ("prior", "null"): {}}
    return Sampler(routes, conditions, prior_swap(2.0), DDIMScheduler(**model.scheduler_config))


def test_same_match_on_another_schedule_is_refused_with_the_fix():
    model, prior = Zero("linear"), Zero("scaled_linear")
    with pytest.raises(ValueError, match=r"prior route .*match='same'.*another noise schedule.*match='continuous'"):
        sampler(model, prior, "same")
    sampler(model, prior, "continuous")  # σ-matched: accepted
    sampler(model, Zero("linear"), "same")  # same schedule: the model's timesteps are the prior's


class Oracle(Denoiser):
    """Knows the one clean sample `x0`: reads its noise level from the timestep it is told, on its own schedule,
    and returns the exact ε / v / flow velocity for the input it gets. Any x̂0 error is then the route's."""

    def __init__(self, x0, parameterization="epsilon", beta_schedule="linear", flow=False):
        self.latent_space = LatentSpace("toy", channels=x0.shape[1], downsample=1)
        self.x0, self.parameterization, self.resolution, self.dtype = x0, parameterization, x0.shape[-1], x0.dtype
        if flow:
            self.scheduler_config = {**FlowMatchEulerDiscreteScheduler().config,
                                     "_class_name": "FlowMatchEulerDiscreteScheduler"}  # as loaded from its json
            self.schedule = FlowSchedule()
        else:
            self.scheduler_config = dict(DDIMScheduler(beta_schedule=beta_schedule,
                                                       prediction_type=parameterization).config)
            self.schedule = DiscreteSchedule.from_scheduler_config(self.scheduler_config)
        self.told: list[float] = []

    def forward(self, x, t, cond):
        self.told.append(float(t[0]))
        sigma = self.schedule.t_to_sigma(float(t[0]))
        if math.isinf(sigma):  # pure noise (a flow run's first step)
            a, b = 0.0, 1.0
        elif self.parameterization == "flow":
            a, b = 1 / (1 + sigma), sigma / (1 + sigma)
        else:
            a, b = 1 / math.sqrt(sigma**2 + 1), sigma / math.sqrt(sigma**2 + 1)
        n = (x - a * self.x0) / b
        return {"epsilon": n, "v_prediction": a * n - b * self.x0, "flow": n - self.x0}[self.parameterization]

    def null_condition(self):
        return {}


def noisy(x0, sigma, seed=0):
    """x0 at σ in the engine's VP frame: (x0 + σ·n)/√(σ²+1)."""
    n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    return (x0 + sigma * n) / math.sqrt(sigma**2 + 1)


X0 = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@pytest.mark.parametrize("rematch", ["continuous", "nearest"])
def test_a_same_schedule_route_sigma_matches_where_an_adapter_moves_sigma(rematch):
    """A prior on the model's schedule but in a latent space scaled by k sees k·σ: told the model's timestep
    (match='same'), its x̂0 was off by 2.35 (a review's repro). The route now σ-matches the moved σ."""
    k, sigma = 2.0, 1.0
    model, prior = Oracle(X0), Oracle(k * X0)
    t = torch.tensor(model.schedule.sigma_to_t(sigma))
    route = Route(prior, (LatentAffine(k, 0.0),), match="same", rematch=rematch)
    x0 = route.predict(noisy(X0, sigma), sigma, t, {})
    expected_t = prior.schedule.sigma_to_t(k * sigma, rematch)
    assert prior.told == [pytest.approx(expected_t)] and prior.told[0] != pytest.approx(float(t))
    tol = 1e-9 if rematch == "continuous" else 1e-6  # continuous: to the float32 ᾱ table's rounding
    assert torch.allclose(x0, X0, atol=tol), (x0 - X0).abs().max()
    # no adapter moving σ: still the model's own timestep
    Route(prior, (), match="same").predict(noisy(X0, sigma), sigma, t, {})
    assert prior.told[-1] == float(t)


@pytest.mark.parametrize("parameterization", ["epsilon", "v_prediction"])
def test_nearest_matching_converts_the_output_at_the_grid_points_sigma(parameterization):
    """DESIGN.md: a prior queried at the nearest grid point has its prediction converted at its own σ there.
    An exact prior then gives back x0 exactly; converted at the model's σ it was off by up to 2.6 % of σ."""
    prior = Oracle(X0, parameterization, beta_schedule="scaled_linear")
    for sigma in (0.05, 0.7, 3.3, 40.0):
        x0 = Route(prior, match="nearest").predict(noisy(X0, sigma), sigma, torch.tensor(0.0), {})
        assert prior.told[-1] == round(prior.told[-1])  # a grid timestep
        assert prior.schedule.t_to_sigma(prior.told[-1]) != pytest.approx(sigma, rel=1e-4)
        assert torch.allclose(x0, X0, atol=1e-9), (sigma, (x0 - X0).abs().max())


def test_a_rectified_flow_model_samples_with_its_own_scheduler():
    """A flow model ran into `init_noise_sigma`, which diffusers' flow scheduler lacks; an exact flow model's
    Euler run now ends on its x0. DDIM and Euler (VP schedulers) are refused for it with the fix."""
    from priorswap.api import make_scheduler
    from priorswap.errors import PriorswapError
    from priorswap.guidance import cfg

    model = Oracle(X0, "flow", flow=True)
    scheduler = make_scheduler("native", model.scheduler_config)
    routes = {"model": Route(model)}
    sampler = Sampler(routes, {("model", "full"): {}, ("model", "null"): {}}, cfg(3.0), scheduler)
    noise = torch.randn(X0.shape, generator=torch.Generator().manual_seed(0), dtype=X0.dtype)
    out = sampler.run(noise, 8)
    assert torch.allclose(out, X0, atol=1e-6), (out - X0).abs().max()
    for kind in ("ddim", "euler"):
        with pytest.raises(PriorswapError, match=r"rectified-flow model .*--scheduler native"):
            make_scheduler(kind, model.scheduler_config)
