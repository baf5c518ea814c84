import math

import numpy as np
import pytest
import torch

from pangudraw.noise import (
    PREDICTION_TYPES,
    DiscreteVPSchedule,
    RectifiedFlowSchedule,
    from_x0,
    to_x0,
)

SCHEDULES = {
    "linear": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
}


def reference_abar(name: str, T: int = 1000) -> np.ndarray:
    """Cumulative alphas written out from the papers, independent of diffusers."""
    if name == "linear":
        betas = np.linspace(0.0001, 0.02, T)
    elif name == "scaled_linear":
        betas = np.linspace(0.00085**0.5, 0.012**0.5, T) ** 2
    else:

        def f(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return np.cumprod(1 - betas)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_sigma_matches_closed_form_and_round_trips(name):
    schedule = DiscreteVPSchedule.from_config({"num_train_timesteps": 1000, **SCHEDULES[name]})
    abar = reference_abar(name)
    # diffusers computes betas in float32: the table agrees to float32 accuracy.
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), abar, rtol=0, atol=2e-6)
    for t in [0, 1, 250, 499, 500, 998, 999]:
        a = float(schedule.alphas_cumprod[t])
        assert schedule.t_to_sigma(t) == pytest.approx(math.sqrt((1 - a) / a), rel=1e-12)
        assert schedule.sigma_to_t(schedule.t_to_sigma(t)) == pytest.approx(t, abs=1e-9)
    for t in [0.5, 123.25, 998.9]:
        assert schedule.sigma_to_t(schedule.t_to_sigma(t)) == pytest.approx(t, abs=1e-9)
    # Between table entries log sigma is linear in t.
    log_mid = 0.5 * (math.log(schedule.t_to_sigma(10)) + math.log(schedule.t_to_sigma(11)))
    assert math.log(schedule.t_to_sigma(10.5)) == pytest.approx(log_mid, rel=1e-12)


def test_sigma_is_increasing_and_out_of_range_t_is_rejected():
    schedule = DiscreteVPSchedule.from_config(SCHEDULES["scaled_linear"])
    sigmas = [schedule.t_to_sigma(t) for t in range(1000)]
    assert all(b > a for a, b in zip(sigmas, sigmas[1:]))
    assert schedule.sigma_min == pytest.approx(sigmas[0])
    assert schedule.sigma_max == pytest.approx(sigmas[-1])
    with pytest.raises(ValueError, match="outside"):
        schedule.t_to_sigma(1000)


def test_sigma_beyond_the_table_clamps_to_its_ends():
    schedule = DiscreteVPSchedule.from_config(SCHEDULES["scaled_linear"])
    assert schedule.sigma_to_t(schedule.sigma_max * 10) == 999
    assert schedule.sigma_to_t(schedule.sigma_min / 10) == 0
    assert schedule.sigma_to_t(0.0) == 0


def test_rectified_flow_sigma():
    schedule = RectifiedFlowSchedule(1000)
    assert schedule.t_to_sigma(500) == pytest.approx(1.0)
    assert schedule.t_to_sigma(250) == pytest.approx(1 / 3)
    assert schedule.sigma_to_t(3.0) == pytest.approx(750)
    alpha, s = schedule.coefficients(3.0)
    assert (alpha, s) == pytest.approx((0.25, 0.75))


def gaussian_posteriors(z, mu, tau, alpha, s):
    """Exact E[x0|z] and E[n|z] for x0 ~ N(mu, tau^2), z = alpha x0 + s n."""
    var_z = alpha**2 * tau**2 + s**2
    x0 = mu + alpha * tau**2 * (z - alpha * mu) / var_z
    eps = s * (z - alpha * mu) / var_z
    return x0, eps


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("sigma", [0.05, 1.0, 14.6])
def test_exact_gaussian_denoiser_in_every_parameterisation(kind, sigma):
    schedule = (
        DiscreteVPSchedule.from_config(SCHEDULES["scaled_linear"])
        if kind == "vp"
        else RectifiedFlowSchedule()
    )
    alpha, s = schedule.coefficients(sigma)
    mu, tau = 0.3, 0.7
    z = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0, eps = gaussian_posteriors(z, mu, tau, alpha, s)
    outputs = {"epsilon": eps, "sample": x0}
    if kind == "vp":
        outputs["v_prediction"] = alpha * eps - s * x0
    else:
        outputs["flow"] = eps - x0
    for prediction_type, output in outputs.items():
        torch.testing.assert_close(to_x0(output, z, alpha, s, prediction_type), x0)
        torch.testing.assert_close(from_x0(x0, z, alpha, s, prediction_type), output)


def test_conversion_round_trip_for_every_type():
    z, out = torch.randn(2, 64, dtype=torch.float64)
    alpha, s = DiscreteVPSchedule.from_config(SCHEDULES["linear"]).coefficients(2.0)
    for prediction_type in PREDICTION_TYPES:
        x0 = to_x0(out, z, alpha, s, prediction_type)
        torch.testing.assert_close(from_x0(x0, z, alpha, s, prediction_type), out)
    with pytest.raises(ValueError, match="unknown prediction type"):
        to_x0(out, z, alpha, s, "score")
