"""The Coop-Diffusion denoising loop (docs/design.md, section 4).

State: the canvas latents (one latent space at the target size, stepped by a diffusers
scheduler) and, for every active expert that works elsewhere (another latent space or
another resolution), its own latents at its own site. One step at noise level sigma:

1. the active experts are those whose window contains sigma;
2. an expert that becomes active gets its first input by noise re-sampling from the
   current fused estimate (pure noise at the first step);
3. each active expert predicts x0 in its own space, with its own guidance and controls;
4. the estimates are bridged to the canvas and fused:
   ``x0 = sum_i w_i m_i B_iP(x0_i) / sum_i w_i m_i``;
5. the canvas steps with the fused x0 (given to the scheduler as epsilon, the one
   prediction type every diffusers scheduler takes); every other expert's latents step
   to the next noise level around ``B_Pi(x0)``, keeping their own noise ("carry", a
   deterministic DDIM step) or drawing it afresh ("resample").
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .bridge import Site, bridge, renoise
from .errors import UserError
from .experts import Conditioning, Control, Expert
from .noise import DiscreteVPSchedule, SigmaWindow, from_x0
from .options import NOISE_POLICIES

SAMPLERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}
NoisePolicy = Literal["carry", "resample"]


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
        size: its working size in pixels (height, width); None works on the canvas size.
        mask: (1, 1, H, W) weights in [0, 1] at the canvas pixel size; None covers all.
        controls: ControlNets applied in its own space.
    """

    expert: Expert
    cond: Conditioning
    guidance_scale: float = 1.0
    weight: float = 1.0
    window: SigmaWindow = SigmaWindow()
    size: tuple[int, int] | None = None
    mask: torch.Tensor | None = None
    controls: list[Control] = field(default_factory=list)

    def __post_init__(self):
        self.window = SigmaWindow(*self.window)  # a plain (lo, hi) pair is accepted too

    def active(self, sigma: float) -> bool:
        return self.window.contains(sigma)

    def site(self, canvas: Site) -> Site:
        return Site(self.expert.space, self.size or canvas.size)


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


def _latent_masks(participants: list[Participant], hw: tuple[int, int]) -> list[torch.Tensor]:
    """Each participant's weight map ``w_i m_i`` at the canvas latent resolution."""
    maps = []
    for p in participants:
        if p.mask is None:
            maps.append(torch.full((1, 1, *hw), float(p.weight)))
        else:
            maps.append(p.weight * F.interpolate(p.mask.float(), size=hw, mode="area"))
    return maps


def check_coverage(
    participants: list[Participant], sigmas: list[float], weight_maps: list[torch.Tensor]
) -> None:
    """Reject, before any network runs, a trajectory with a step no expert covers."""
    uncovered = [s for s in sigmas if not any(p.active(s) for p in participants)]
    if uncovered:
        raise UserError(
            f"no expert is active for sigma in [{min(uncovered):.4g}, {max(uncovered):.4g}] "
            f"({len(uncovered)} of {len(sigmas)} steps); widen a window to cover the gap"
        )
    for sigma in sigmas:
        active = [k for k, p in enumerate(participants) if p.active(sigma)]
        total = sum(weight_maps[k] for k in active)
        if float(total.min()) <= 0:
            unmasked = all(participants[k].mask is None for k in active)
            what = "weights sum to" if unmasked else "weights and masks leave part of the canvas at"
            raise UserError(
                f"at sigma={sigma:.4g} the active experts' {what} zero; "
                "give an active expert a positive weight or a mask that covers the canvas"
            )


def fuse(estimates: list[torch.Tensor], weight_maps: list[torch.Tensor]) -> torch.Tensor:
    """``sum_i w_i m_i x0_i / sum_i w_i m_i`` (one estimate: itself, exactly)."""
    if len(estimates) == 1:
        return estimates[0]
    total = sum(weight_maps)
    return sum(w * x0 for w, x0 in zip(weight_maps, estimates)) / total


def sample(
    participants: list[Participant],
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: Callable[[Step], None] | None = None,
    canvas: Site | None = None,
    noise_policy: NoisePolicy = "carry",
    bridge_every: int = 1,
) -> torch.Tensor:
    """Run the Coop-Diffusion loop and return the clean canvas latents.

    Args:
        participants: the experts taking part.
        scheduler: a fresh sampler from :func:`make_scheduler`; its training schedule
            defines the canvas trajectory's noise levels.
        noise: (B, C, h, w) standard normal noise at the canvas latent shape.
        num_inference_steps: number of sampler steps.
        generator: for ancestral samplers and for the noise of experts off the canvas.
        callback: called after every step with a :class:`Step`.
        canvas: the canvas site; by default the first participant's space at the noise's size.
        noise_policy: how experts off the canvas step (module docstring).
        bridge_every: experts off the canvas run (and are bridged) every this many steps;
            in between the canvas fuses their last bridged estimate. 1 is the exact loop.

    Returns:
        (B, C, h, w) latents in the canvas space.
    """
    if noise_policy not in NOISE_POLICIES:
        raise UserError(f"unknown noise policy {noise_policy!r}; use one of {NOISE_POLICIES}")
    if bridge_every < 1:
        raise UserError(f"bridge_every must be at least 1, got {bridge_every}")
    if canvas is None:
        space = participants[0].expert.space
        canvas = Site(space, (noise.shape[-2] * space.factor, noise.shape[-1] * space.factor))
    sites = [p.site(canvas) for p in participants]
    on_canvas = [site.same_as(canvas) for site in sites]

    scheduler.set_timesteps(num_inference_steps)
    schedule = DiscreteVPSchedule(scheduler.alphas_cumprod.to(torch.float64))
    timesteps = scheduler.timesteps
    sigmas = [schedule.t_to_sigma(float(t)) for t in timesteps]
    weight_maps = _latent_masks(participants, tuple(noise.shape[-2:]))
    check_coverage(participants, sigmas, weight_maps)

    step_kwargs = _step_kwargs(scheduler, generator)
    latents = noise * scheduler.init_noise_sigma
    off_latents: dict[int, torch.Tensor] = {}  # x = x0 + sigma n of experts off the canvas
    bridged: dict[int, torch.Tensor] = {}  # their last x0 estimates, bridged to the canvas
    next_run: dict[int, int] = {}  # the step at which each of them runs next
    x0 = None
    for i, t in enumerate(timesteps):
        sigma = sigmas[i]
        alpha, s = schedule.coefficients(sigma)
        z = scheduler.scale_model_input(latents, t)
        # Variance-exploding view of the canvas: x = x0 + sigma * n.
        x = z / alpha
        active = [k for k, p in enumerate(participants) if p.active(sigma)]
        for k in [k for k in off_latents if k not in active]:
            del off_latents[k], bridged[k], next_run[k]  # re-enters by re-sampling if active again
        estimates = []
        for k in active:
            p, site = participants[k], sites[k]
            if on_canvas[k]:
                estimates.append(p.expert.denoise(x, sigma, p.cond, p.guidance_scale, p.controls))
                continue
            if k not in off_latents:
                # Entry by noise re-sampling (pure noise before any estimate exists).
                if x0 is None:
                    shape = site.latent_shape(noise.shape[0])
                    pure = randn_tensor(shape, generator=generator, dtype=noise.dtype)
                    off_latents[k] = pure * math.sqrt(1.0 + sigma * sigma)
                else:
                    off_latents[k] = renoise(bridge(x0, canvas, site), sigma, generator)
                next_run[k] = i
            if next_run[k] == i:
                x0_k = p.expert.denoise(off_latents[k], sigma, p.cond, p.guidance_scale, p.controls)
                bridged[k] = bridge(x0_k, site, canvas)
            estimates.append(bridged[k])
        # Fusion on x0.
        x0 = fuse(estimates, [weight_maps[k] for k in active])
        # Canvas step.
        eps = from_x0(x0, z, alpha, s, "epsilon")
        latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
        # Experts that ran off the canvas step, in their own spaces, to the noise level of
        # their next run (a DDIM step can jump several sampler steps) around the fused x0.
        for k in [k for k in off_latents if next_run[k] == i]:
            next_run[k] = i + bridge_every
            sigma_next = sigmas[next_run[k]] if next_run[k] < len(sigmas) else 0.0
            if sigma_next == 0.0:
                continue
            target = bridge(x0, canvas, sites[k])
            if noise_policy == "carry":
                off_latents[k] = target + sigma_next * (off_latents[k] - target) / sigma
            else:
                off_latents[k] = renoise(target, sigma_next, generator)
        if callback is not None:
            callback(Step(i, len(timesteps), float(t), sigma, x0, latents, active))
    return latents
