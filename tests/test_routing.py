"""Routing: which denoiser answers which branch, and how many forward passes a step costs."""

import torch
from diffusers import DDIMScheduler

from priorswap import Denoiser, DiscreteSchedule, LatentSpace, Route, Sampler
from priorswap import guidance as G

SPACE = LatentSpace("toy", channels=2, downsample=1)
CONFIG = dict(DDIMScheduler(beta_schedule="linear", clip_sample=False).config)


class Recording(Denoiser):
    """A linear fake network that records every call's batch and conditions."""

    def __init__(self, gain: float, schedule_config=CONFIG):
        self.gain = gain
        self.latent_space = SPACE
        self.schedule = DiscreteSchedule.from_scheduler_config(schedule_config)
        self.scheduler_config = schedule_config
        self.calls: list[dict] = []

    def forward(self, x, t, cond):
        self.calls.append({"batch": x.shape[0], "labels": cond["label"].tolist(), "t": t.tolist()})
        return self.gain * x + cond["label"].view(-1, 1, 1, 1).to(x.dtype) * 0.01

    def null_condition(self):
        return {"label": torch.tensor([-1])}


def _run(guidance, model, prior=None, steps=5):
    routes = {"model": Route(model)}
    conds = {("model", "full"): {"label": torch.tensor([3, 4])}, ("model", "null"): model.null_condition()}
    if prior is not None:
        routes["prior"] = Route(prior, match="continuous")
        conds[("prior", "null")] = prior.null_condition()
    sampler = Sampler(routes, conds, guidance, DDIMScheduler.from_config(CONFIG))
    noise = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    return sampler, sampler.run(noise, steps)


def test_prior_swap_never_asks_the_model_for_the_null_condition():
    model, prior = Recording(0.9), Recording(0.5)
    sampler, _ = _run(G.prior_swap(3.0), model, prior)
    assert len(model.calls) == 5 and len(prior.calls) == 5  # one forward each per step
    assert all(-1 not in c["labels"] for c in model.calls)
    assert all(c["labels"] == [-1, -1] for c in prior.calls)
    assert sampler.forward_calls == {"model": 5, "prior": 5}


def test_branches_sharing_a_denoiser_are_batched():
    model = Recording(0.9)
    sampler, _ = _run(G.cfg(3.0), model)
    assert len(model.calls) == 5
    assert all(c["batch"] == 4 and c["labels"] == [3, 4, -1, -1] for c in model.calls)


def test_unit_scale_skips_the_unconditional_branch():
    model, prior = Recording(0.9), Recording(0.5)
    _run(G.prior_swap(1.0), model, prior)
    assert len(prior.calls) == 0
    assert all(c["batch"] == 2 for c in model.calls)


def test_guidance_interval_skips_the_prior_outside_it():
    model, prior = Recording(0.9), Recording(0.5)
    sigmas = model.schedule
    sched = DDIMScheduler.from_config(CONFIG)
    sched.set_timesteps(5)
    inside = [float(sigmas.t_to_sigma(float(t))) for t in sched.timesteps]
    lo, hi = sorted(inside)[1], sorted(inside)[3]
    _run(G.prior_swap(3.0).with_options(interval=(lo, hi)), model, prior)
    assert len(prior.calls) == 3


def test_prior_on_another_schedule_gets_matched_timesteps():
    other = dict(DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config)
    model, prior = Recording(0.9), Recording(0.5, other)
    _run(G.prior_swap(2.0), model, prior, steps=3)
    model_t = [c["t"][0] for c in model.calls]
    prior_t = [c["t"][0] for c in prior.calls]
    for tm, tp in zip(model_t, prior_t, strict=True):
        sigma = model.schedule.t_to_sigma(tm)
        assert abs(tp - prior.schedule.sigma_to_t(sigma)) < 1e-3
    assert prior_t != model_t


def test_same_network_as_prior_is_plain_cfg_exactly():
    model = Recording(0.9)
    route = Route(model)
    conds = {("model", "full"): {"label": torch.tensor([3, 4])}, ("model", "null"): model.null_condition(),
             ("prior", "null"): model.null_condition()}
    noise = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    swap = Sampler({"model": route, "prior": route}, conds, G.prior_swap(3.0), DDIMScheduler.from_config(CONFIG))
    cfg = Sampler({"model": route}, conds, G.cfg(3.0), DDIMScheduler.from_config(CONFIG))
    assert torch.equal(swap.run(noise, 4), cfg.run(noise, 4))
    assert swap.forward_calls == {"model+prior": 4}
