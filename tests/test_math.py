"""Property tests of the maths: parameterizations, σ-matching and guidance identities."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from priorswap import guidance as G
from priorswap.parameterization import PARAMETERIZATIONS, coefficients, convert_frame, frame_of, from_x0, to_x0
from priorswap.schedules import DiscreteSchedule, FlowSchedule

sigmas = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)
SHAPE = (2, 4, 3, 3)


def _tensor(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _betas_schedule(kind: str, start=0.0001, end=0.02, n=1000) -> DiscreteSchedule:
    cfg = {"beta_schedule": kind, "beta_start": start, "beta_end": end, "num_train_timesteps": n}
    return DiscreteSchedule.from_scheduler_config(cfg)


LINEAR = _betas_schedule("linear")
SCALED = _betas_schedule("scaled_linear", 0.00085, 0.012)
COSINE = _betas_schedule("squaredcos_cap_v2")


@settings(max_examples=60, deadline=None)
@given(sigma=sigmas, seed=st.integers(0, 2**16), param=st.sampled_from(PARAMETERIZATIONS))
def test_parameterization_round_trip(sigma, seed, param):
    """output → x̂0 → output is the identity for ε, v, x0 and flow at any σ."""
    x, out = _tensor(seed), _tensor(seed + 1)
    a, b = coefficients(frame_of(param), sigma)
    x0 = to_x0(param, out, x, a, b)
    back = from_x0(param, x0, x, a, b)
    torch.testing.assert_close(back, out, rtol=1e-7, atol=1e-7 * (1 + sigma))


@settings(max_examples=60, deadline=None)
@given(sigma=sigmas, seed=st.integers(0, 2**16))
def test_parameterizations_agree_on_the_truth(sigma, seed):
    """Given the true x0 and noise, each parameterization's target maps to the same x̂0."""
    x0, n = _tensor(seed), _tensor(seed + 1)
    targets = {}
    for frame in ("vp", "flow"):
        a, b = coefficients(frame, sigma)
        x = a * x0 + b * n
        targets[frame] = x
        if frame == "vp":
            outs = {"epsilon": n, "v_prediction": a * n - b * x0, "sample": x0}
        else:
            outs = {"flow": n - x0}
        for param, out in outs.items():
            torch.testing.assert_close(to_x0(param, out, x, a, b), x0, rtol=1e-6, atol=1e-6 * (1 + sigma))
    # the frames hold the same sample up to the frame conversion
    torch.testing.assert_close(convert_frame(targets["vp"], sigma, "vp", "flow"), targets["flow"])
    ve = x0 + sigma * n
    torch.testing.assert_close(convert_frame(ve, sigma, "ve", "vp"), targets["vp"])


def test_zero_terminal_snr_is_finite():
    """At σ = ∞ the VP and flow frames stay finite and v/flow predictions give x̂0 = −v / x − u."""
    for frame in ("vp", "flow"):
        a, b = coefficients(frame, math.inf)
        assert (a, b) == (0.0, 1.0)
    x, v = _tensor(0), _tensor(1)
    torch.testing.assert_close(to_x0("v_prediction", v, x, 0.0, 1.0), -v)
    torch.testing.assert_close(convert_frame(x, math.inf, "vp", "flow"), x)
    ztsnr = DiscreteSchedule.from_scheduler_config(
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True}
    )
    assert math.isinf(ztsnr.sigma_max) and math.isfinite(ztsnr.sigma_max_finite)
    assert ztsnr.sigma_to_t(math.inf) == 999.0 and math.isinf(ztsnr.t_to_sigma(999))


@settings(max_examples=40, deadline=None)
@given(
    pair=st.sampled_from([(LINEAR, SCALED), (SCALED, LINEAR), (LINEAR, COSINE), (COSINE, SCALED)]),
    ts=st.lists(st.floats(0, 999), min_size=2, max_size=20),
    match=st.sampled_from(["continuous", "nearest"]),
)
def test_sigma_matching_is_monotonic(pair, ts, match):
    source, target = pair
    mapped = [target.sigma_to_t(source.t_to_sigma(t), match) for t in sorted(ts)]
    assert all(b >= a for a, b in zip(mapped, mapped[1:], strict=False))


@settings(max_examples=60, deadline=None)
@given(i=st.integers(0, 999), match=st.sampled_from(["continuous", "nearest"]))
def test_sigma_matching_exact_at_grid_points(i, match):
    """A σ that is on the target's grid maps to exactly that grid index (and back)."""
    for sched in (LINEAR, SCALED, COSINE):
        assert sched.sigma_to_t(float(sched.sigmas[i]), match) == float(i)
        assert sched.t_to_sigma(i) == float(sched.sigmas[i])


def test_grid_points_stay_exact_when_numpy_and_math_logs_differ_by_an_ulp():
    """numpy 1.26's AVX-512 log differs from math.log by an ulp for some σ: a grid σ must still map to its index
    (the table's logs are nudged by one ulp here to stand for that numpy)."""
    import copy

    for sched in (LINEAR, COSINE):
        for direction in (-np.inf, np.inf):
            nudged = copy.copy(sched)
            nudged.log_sigmas = np.nextafter(sched.log_sigmas, direction)
            for i in (1, 10, 500, 998):
                assert nudged.sigma_to_t(float(sched.sigmas[i])) == float(i)
                between = math.exp(0.5 * (sched.log_sigmas[i] + sched.log_sigmas[i + 1]))
                assert i <= nudged.sigma_to_t(between) <= i + 1


def test_continuous_matching_interpolates_log_sigma():
    s = math.exp(0.5 * (LINEAR.log_sigmas[10] + LINEAR.log_sigmas[11]))
    assert LINEAR.sigma_to_t(s) == pytest.approx(10.5, abs=1e-9)
    assert LINEAR.sigma_to_t(s, "nearest") in (10.0, 11.0)
    assert LINEAR.t_to_sigma(10.5) == pytest.approx(s, rel=1e-12)
    # outside the table: clamp
    assert SCALED.sigma_to_t(LINEAR.sigma_max) == 999.0
    assert LINEAR.sigma_to_t(1e-9) == 0.0


def test_flow_schedule_round_trip():
    flow = FlowSchedule()
    for t in (0.0, 1.0, 250.5, 999.0):
        assert flow.sigma_to_t(flow.t_to_sigma(t)) == pytest.approx(t)
    assert flow.sigma_to_t(math.inf) == 1000.0


def _preds(seed: int) -> dict:
    keys = [("model", "full"), ("model", "partial"), ("model", "null"), ("prior", "null"), ("prior", "full")]
    return {k: _tensor(seed + i) for i, k in enumerate(keys)}


@settings(max_examples=60, deadline=None)
@given(scale=st.floats(0.0, 20.0), seed=st.integers(0, 2**16), sigma=sigmas)
def test_prior_swap_with_itself_is_cfg(scale, seed, sigma):
    preds = _preds(seed)
    preds[("prior", "null")] = preds[("model", "null")]
    assert torch.equal(G.prior_swap(scale).combine(preds, sigma), G.cfg(scale).combine(preds, sigma))


@settings(max_examples=60, deadline=None)
@given(i_scale=st.floats(0.0, 10.0), t_scale=st.floats(0.0, 10.0), seed=st.integers(0, 2**16), sigma=sigmas)
def test_dual_prior_swap_with_itself_is_dual_cfg(i_scale, t_scale, seed, sigma):
    preds = _preds(seed)
    preds[("prior", "null")] = preds[("model", "null")]
    swap = G.dual_prior_swap(i_scale, t_scale).combine(preds, sigma)
    assert torch.equal(swap, G.dual_cfg(i_scale, t_scale).combine(preds, sigma))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), sigma=sigmas)
def test_unit_scale_is_the_conditional_prediction(seed, sigma):
    preds = _preds(seed)
    for rule in (G.cfg(1.0), G.prior_swap(1.0), G.autoguidance(1.0), G.dual_cfg(1.0, 1.0)):
        assert torch.equal(rule.combine(preds, sigma), preds[("model", "full")])
        assert [t.branch for t in rule.terms_at(sigma)] == [("model", "full")]


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(0.0, 10.0), seed=st.integers(0, 2**16))
def test_formulas_match_the_design(scale, seed):
    p = _preds(seed)
    mf, mn, pn, pf = p[("model", "full")], p[("model", "null")], p[("prior", "null")], p[("prior", "full")]
    close = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(G.cfg(scale).combine(p, 1.0), mn + scale * (mf - mn), **close)
    torch.testing.assert_close(G.prior_swap(scale).combine(p, 1.0), pn + scale * (mf - pn), **close)
    torch.testing.assert_close(G.autoguidance(scale).combine(p, 1.0), pf + scale * (mf - pf), **close)
    mp = p[("model", "partial")]
    expected = pn + 1.5 * (mp - pn) + scale * (mf - mp)
    torch.testing.assert_close(G.dual_prior_swap(1.5, scale).combine(p, 1.0), expected, **close)


def test_rescale_and_interval():
    p = _preds(7)
    rule = G.cfg(5.0).with_options(rescale=1.0)
    out = rule.combine(p, 1.0)
    ref = p[("model", "full")]
    np.testing.assert_allclose(out.std(dim=(1, 2, 3)), ref.std(dim=(1, 2, 3)), rtol=1e-10)
    half = G.cfg(5.0).with_options(rescale=0.5).combine(p, 1.0)
    torch.testing.assert_close(half, 0.5 * out + 0.5 * G.cfg(5.0).combine(p, 1.0))
    windowed = G.cfg(5.0).with_options(interval=(0.5, 2.0))
    assert torch.equal(windowed.combine(p, 3.0), ref)
    assert torch.equal(windowed.combine(p, 1.0), G.cfg(5.0).combine(p, 1.0))
    with pytest.raises(ValueError, match="sum to 1"):
        G.Guidance("bad", (G.Term(2.0, "model", "full"),))
    with pytest.raises(ValueError, match="unknown guidance"):
        G.build("nope", 1.0)
