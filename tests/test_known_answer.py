"""The loop against closed-form answers: Gaussian data has an exact denoiser.

For ``x0 ~ N(mu, tau^2)`` the probability-flow ODE is linear: starting from
``x_start = sqrt(1 + s^2) n`` at noise level ``s``, its exact solution at sigma = 0 is
``mu + (x_start - mu) * tau / sqrt(tau^2 + s^2)``. A sampler driven by the exact denoiser
must converge to it per sample as the step count grows.
"""

import math

import pytest
import torch

from fixtures.tiny_models import FLOW_SCHEDULE, gaussian_expert
from pangudraw.bridge import Site
from pangudraw.coop import Participant, make_scheduler, sample
from pangudraw.families import Conditioning
from pangudraw.noise import DiscreteVPSchedule

MU, TAU = 0.1, 0.3
COND = Conditioning(torch.zeros(4, 1, 1), guided=False)


def exact_samples(noise: torch.Tensor, scheduler) -> torch.Tensor:
    schedule = DiscreteVPSchedule(scheduler.alphas_cumprod.to(torch.float64))
    s = schedule.t_to_sigma(float(scheduler.timesteps[0]))
    x_start = noise * math.sqrt(1 + s * s)
    return MU + (x_start - MU) * TAU / math.sqrt(TAU**2 + s * s)


def run(participants, sampler: str, steps: int, **kwargs):
    expert = participants[0].expert
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # DDIM's default clip_sample would clamp x0 to [-1, 1]; SD configs turn it off too.
    scheduler = make_scheduler(sampler, expert.scheduler_config, clip_sample=False)
    out = sample(participants, scheduler, noise, steps, torch.Generator().manual_seed(1), **kwargs)
    return out, exact_samples(noise, scheduler)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m", "unipc"])
def test_exact_denoiser_reaches_the_exact_ode_solution(sampler):
    """Max per-sample error against the exact solution, 10 vs 200 steps.

    On this leading-spacing schedule (last step from t = 1) every sampler converges at
    first order (measured: about 0.36 at 10 steps, 0.033-0.037 at 200).
    """
    expert = gaussian_expert(MU, TAU)
    coarse, exact_coarse = run([Participant(expert, COND)], sampler, 10)
    fine, exact_fine = run([Participant(expert, COND)], sampler, 200)
    coarse_error = (coarse - exact_coarse).abs().max().item()
    fine_error = (fine - exact_fine).abs().max().item()
    assert fine_error < 0.045
    assert fine_error < coarse_error / 8  # converges with the step count


def test_ancestral_sampler_matches_the_data_distribution():
    expert = gaussian_expert(MU, TAU)
    out, _ = run([Participant(expert, COND)], "euler_a", 100)
    assert abs(out.mean().item() - MU) < 0.03
    assert abs(out.std().item() - TAU) < 0.03


def test_two_halves_of_one_exact_expert_equal_it():
    expert = gaussian_expert(MU, TAU)
    one, _ = run([Participant(expert, COND)], "dpmpp_2m", 20)
    two, _ = run(
        [Participant(expert, COND, weight=0.5), Participant(expert, COND, weight=0.5)],
        "dpmpp_2m",
        20,
    )
    torch.testing.assert_close(two, one, atol=1e-5, rtol=0)


def test_an_expert_off_the_canvas_samples_its_own_distribution_with_carried_noise():
    """A lone expert in another latent space drives the canvas through the bridge.

    With ``carry`` its own latents follow a deterministic DDIM trajectory from its own
    starting noise, so the canvas ends on one exact sample of the data distribution.
    """
    pixels = gaussian_expert(MU, TAU, name="canvas")
    folded = gaussian_expert(MU, TAU, unshuffle=2, name="folded")
    canvas = Site(pixels.space, (16, 16))
    out, _ = run([Participant(folded, COND)], "euler", 100, canvas=canvas)
    assert abs(out.mean().item() - MU) < 0.03
    assert abs(out.std().item() - TAU) < 0.03


def run_flow_canvas(participants, steps: int):
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scheduler = make_scheduler("euler", FLOW_SCHEDULE)
    out = sample(participants, scheduler, noise, steps, torch.Generator().manual_seed(1))
    # From u = 1 (sigma = inf) the exact flow ends at mu + tau * n.
    return out, MU + TAU * noise


def flow_and_epsilon():
    flow = gaussian_expert(MU, TAU, flow=True, name="flow")
    eps = gaussian_expert(MU, TAU, name="eps")
    return [Participant(flow, COND, weight=0.5), Participant(eps, COND, weight=0.5)]


def test_exact_flow_expert_on_a_flow_canvas_reaches_the_exact_solution():
    """The flow canvas starts at sigma = inf (pure noise) and stays finite. Euler converges
    at first order (measured max error: 0.24 at 10 steps, 0.024 at 100, 0.0059 at 400)."""
    expert = gaussian_expert(MU, TAU, flow=True)
    errors = []
    for steps in (10, 200):
        out, exact = run_flow_canvas([Participant(expert, COND)], steps)
        errors.append((out - exact).abs().max().item())
    assert errors[1] < 0.02 and errors[1] < errors[0] / 10


def test_flow_and_epsilon_experts_fused_converge_to_the_exact_solution():
    """A flow expert and an epsilon expert, both exact, fused half and half, on either kind
    of canvas. On the flow canvas the epsilon expert meets sigma = inf at the first step and
    sees its schedule's last level there: an error that shrinks with the first step.
    Measured max error, 10 -> 200 steps: flow canvas 0.24 -> 0.014, euler canvas 0.36 -> 0.037
    (each expert alone: 0.24 -> 0.012 and 0.36 -> 0.035)."""
    errors = {}
    for canvas in ("flow", "euler"):
        for steps in (10, 200):
            if canvas == "flow":
                out, exact = run_flow_canvas(flow_and_epsilon(), steps)
            else:
                out, exact = run(flow_and_epsilon()[::-1], "euler", steps)
            errors[canvas, steps] = (out - exact).abs().max().item()
    assert errors["flow", 200] < 0.02 and errors["euler", 200] < 0.045
    for canvas in ("flow", "euler"):
        assert errors[canvas, 200] < errors[canvas, 10] / 8
