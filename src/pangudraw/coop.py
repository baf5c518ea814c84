"""The Coop-Diffusion denoising loop (DESIGN.md 2.3).

At each noise level sigma the active experts each predict a denoised estimate with their
own guidance, the estimates are fused on x0, and a diffusers scheduler steps the canvas
with the fused x0, converted to epsilon (the one prediction type every diffusers scheduler
takes).

This version fuses experts that share the canvas latent space and resolution; bridging
between spaces (DESIGN.md 2.2) slots in where each estimate is brought to the canvas.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .errors import UserError
from .experts import Conditioning, Expert
from .noise import DiscreteVPSchedule, from_x0

SAMPLERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}


def make_scheduler(sampler: str, training_config: dict, **overrides) -> SchedulerMixin:
    """A fresh sampler (per call: schedulers hold state) on a model's training schedule.

    The scheduler receives the fused estimate converted to epsilon, whatever the experts
    predict, so its prediction type is "epsilon".
    """
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    config = {k: v for k, v in training_config.items() if not k.startswith("_")}
    return SAMPLERS[sampler].from_config(config, **{**overrides, "prediction_type": "epsilon"})


@dataclass
class Participant:
    """One expert's part in one generation.

    Attributes:
        expert: the loaded expert.
        cond: its encoded prompts (from ``expert.encode_prompt``).
        guidance_scale: its own classifier-free guidance scale.
        weight: its weight in the x0 fusion.
        window: the noise levels [lo, hi) on the shared sigma axis where it is active.
    """

    expert: Expert
    cond: Conditioning
    guidance_scale: float = 1.0
    weight: float = 1.0
    window: tuple[float, float] = (0.0, math.inf)

    def active(self, sigma: float) -> bool:
        lo, hi = self.window
        return lo <= sigma < hi


@dataclass
class Step:
    """What a per-step callback sees: step index, timestep, noise level, fused x0, canvas."""

    index: int
    total: int
    timestep: float
    sigma: float
    x0: torch.Tensor
    latents: torch.Tensor
    active: list[int]


def _step_kwargs(scheduler: SchedulerMixin, generator) -> dict:
    accepted = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if "generator" in accepted else {}


def fuse(estimates: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """``sum_i w_i x0_i / sum_i w_i``."""
    total = sum(weights)
    if total <= 0:
        raise UserError("the weights of the active experts sum to zero; give one a positive weight")
    if len(estimates) == 1:
        return estimates[0]
    return sum(w * x0 for w, x0 in zip(weights, estimates)) / total


def sample(
    participants: list[Participant],
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: Callable[[Step], None] | None = None,
) -> torch.Tensor:
    """Run the denoising loop and return the clean canvas latents.

    Args:
        participants: the experts taking part; the first one's space is the canvas.
        scheduler: a fresh sampler from :func:`make_scheduler`.
        noise: (B, C, h, w) standard normal noise at the canvas latent shape.
        num_inference_steps: number of sampler steps.
        generator: for ancestral samplers' per-step noise.
        callback: called after every step with a :class:`Step`.

    Returns:
        (B, C, h, w) latents in the canvas space.
    """
    canvas = participants[0].expert.space
    for p in participants[1:]:
        if not p.expert.space.same_as(canvas):
            raise UserError(
                f"{p.expert.name} uses another latent space than {participants[0].expert.name} "
                f"(another VAE: {p.expert.space.describe()} vs {canvas.describe()}); bridging "
                "between latent spaces is not available yet"
            )
    scheduler.set_timesteps(num_inference_steps)
    schedule = DiscreteVPSchedule(scheduler.alphas_cumprod.to(torch.float64))
    step_kwargs = _step_kwargs(scheduler, generator)
    latents = noise * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        sigma = schedule.t_to_sigma(float(t))
        alpha, s = schedule.coefficients(sigma)
        z = scheduler.scale_model_input(latents, t)
        # Variance-exploding view of the canvas: x = x0 + sigma * n.
        x = z / alpha
        active = [k for k, p in enumerate(participants) if p.active(sigma)]
        if not active:
            raise UserError(
                f"no expert is active at sigma={sigma:.4g} (timestep {float(t):g}); "
                "widen a window so that the windows cover the whole trajectory"
            )
        estimates = [
            participants[k].expert.denoise(
                x, sigma, participants[k].cond, participants[k].guidance_scale
            )
            for k in active
        ]
        x0 = fuse(estimates, [participants[k].weight for k in active])
        # Sampler step on the fused estimate.
        eps = from_x0(x0, z, alpha, s, "epsilon")
        latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
        if callback is not None:
            callback(Step(i, len(timesteps), float(t), sigma, x0, latents, active))
    return latents
