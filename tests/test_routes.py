"""A hand-built Sampler refuses a route that would feed a prior the model's timesteps on another schedule."""

import pytest
import torch
from diffusers import DDIMScheduler

from priorswap import Denoiser, DiscreteSchedule, LatentSpace
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
