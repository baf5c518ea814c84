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
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .bridge import Site, exact_bridge, renoise
from .errors import UserError
from .expert import Control, Expert
from .families import Conditioning
from .noise import DiscreteVPSchedule, SigmaWindow, flow_sigma, from_x0, noise_of, noisy
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

    A DDPM-family scheduler receives the fused estimate converted to epsilon, whatever the
    experts predict, so its prediction type is "epsilon". A rectified-flow model's canvas
    is stepped by ``FlowMatchEulerDiscreteScheduler`` (sampler "euler").
    """
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    config = {k: v for k, v in training_config.items() if not k.startswith("_")}
    trained_with = training_config.get("_class_name")
    if training_config.get("use_flow_sigmas"):  # a solver on flow sigmas (Wan's UniPC)
        if sampler == "unipc":
            return UniPCMultistepScheduler.from_config(config, **overrides)
        if sampler == "euler":  # on the same shifted grid
            steps = config.get("num_train_timesteps", 1000)
            shift = config.get("flow_shift", 1.0)
            return FlowMatchEulerDiscreteScheduler(steps, shift=shift, **overrides)
        raise UserError(
            f"sampler {sampler!r} cannot step this flow model's canvas; use unipc (its own) "
            "or euler"
        )
    if trained_with not in (None, "FlowMatchEulerDiscreteScheduler"):
        # What a diffusers user gets from SAMPLER.from_config(pipe.scheduler.config): the
        # keys the file leaves out at the defaults of the class it names (SD 1.5's
        # PNDMScheduler gives "leading" spacing, where Euler's own default is "linspace").
        import diffusers

        config = dict(getattr(diffusers, trained_with).from_config(config).config)
    if trained_with == "FlowMatchEulerDiscreteScheduler":
        if sampler != "euler":
            raise UserError(
                f"sampler {sampler!r} cannot step a rectified-flow canvas; use euler "
                "(or put an epsilon/v model on the canvas)"
            )
        return FlowMatchEulerDiscreteScheduler.from_config(config, **overrides)
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
class Start:
    """Where the loop starts when a generation starts from a picture
    (:mod:`pangudraw.editing`): at step ``first``, from ``init`` (the picture's clean
    canvas latents) noised with the loop's noise, or from pure noise (``pure``: inpainting
    at full strength); with ``mask`` ((1, 1, h, w) on the canvas latent grid, 1 repaints)
    the known region is put back after every step, noised to the next level with the same
    noise (the clean picture after the last)."""

    first: int
    init: torch.Tensor | None
    pure: bool = False
    mask: torch.Tensor | None = None


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
    canvas: Site | None = None
    resident: list[int] = field(default_factory=list)  # participants in working memory

    def preview(self) -> torch.Tensor:
        """The fused x0 decoded: (B, 3, H, W) in [0, 1] (a VAE decode: call only to show)."""
        return (self.canvas.space.decode(self.x0).float() / 2 + 0.5).clamp(0, 1)


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


def check_every_expert_runs(participants: list[Participant], sigmas: list[float]) -> None:
    """Reject an expert whose window holds none of the steps (a split below the last
    step's noise level): it would silently do nothing."""
    for p in participants:
        if not any(p.active(s) for s in sigmas):
            raise UserError(
                f"{p.expert.name} gets none of the {len(sigmas)} steps (its window "
                f"{p.window.lo:.4g} <= sigma < {p.window.hi:.4g}, the last step at sigma "
                f"{sigmas[-1]:.4g}); move the split or the window, or take more steps"
            )


def fuse(estimates: list[torch.Tensor], weight_maps: list[torch.Tensor]) -> torch.Tensor:
    """``sum_i w_i m_i x0_i / sum_i w_i m_i`` (one estimate: itself, exactly)."""
    if len(estimates) == 1:
        return estimates[0]
    total = sum(weight_maps)
    return sum(w * x0 for w, x0 in zip(weight_maps, estimates)) / total


class SchedulerGrid:
    """A DDPM-family diffusers scheduler as the canvas trajectory (its latents, its steps).

    The scheduler receives the fused estimate converted to epsilon, the one prediction type
    every such scheduler takes.
    """

    def __init__(self, scheduler: SchedulerMixin, num_inference_steps: int, generator=None):
        scheduler.set_timesteps(num_inference_steps)
        self.scheduler = scheduler
        self.schedule = DiscreteVPSchedule(scheduler.alphas_cumprod.to(torch.float64))
        self.timesteps = [float(t) for t in scheduler.timesteps]
        self.sigmas = [self.schedule.t_to_sigma(t) for t in self.timesteps]
        self._t = scheduler.timesteps
        self._kwargs = _step_kwargs(scheduler, generator)

    def start(self, noise: torch.Tensor) -> torch.Tensor:
        return noise * self.scheduler.init_noise_sigma

    def first_step(self, strength: float) -> int:
        """The first step a strength runs (SD/SDXL img2img: the last ``int(N s)``)."""
        n = len(self.timesteps)
        return max(n - min(int(n * strength), n), 0)

    def begin(self, i: int) -> None:
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(i)

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """``x0`` noised to step ``i``'s level in the scheduler's own latents (its
        ``add_noise``, called where diffusers' pipelines call it)."""
        return self.scheduler.add_noise(x0, noise, self._t[i : i + 1])

    def view(self, latents: torch.Tensor, i: int) -> torch.Tensor:
        """The unit view of the canvas at step ``i`` (a VP network's input)."""
        return self.scheduler.scale_model_input(latents, self._t[i])

    def step(self, latents: torch.Tensor, y: torch.Tensor, x0: torch.Tensor, i: int):
        alpha, s = self.schedule.coefficients(self.sigmas[i])
        eps = from_x0(x0, y, alpha, s, "epsilon")
        return self.scheduler.step(eps, self._t[i], latents, **self._kwargs).prev_sample


class FlowGrid:
    """``FlowMatchEulerDiscreteScheduler``'s trajectory: latents ``(1 - u) x0 + u n`` from
    ``u = 1`` (sigma = inf), stepped with the velocity ``(z - x0) / u``.

    ``own_sigmas``: the sigmas FluxPipeline passes, ``linspace(1, 1/N, N)`` shifted by the
    resolution-dependent ``mu`` when the config asks for dynamic shifting; otherwise the
    scheduler's own grid (StableDiffusion3Pipeline), shifted by its ``shift``. ``mu``: a
    family's own rule gave it (Flux.2's depends on the steps too).
    """

    def __init__(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        num_inference_steps: int,
        latent_hw: tuple[int, int],
        own_sigmas: bool = False,
        mu: float | None = None,
    ):
        config = scheduler.config
        seq = (latent_hw[0] // 2) * (latent_hw[1] // 2)  # 2x2 patches, as both pipelines count
        if mu is None and config.get("use_dynamic_shifting"):
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            mu = calculate_shift(
                seq,
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.15 if own_sigmas else 1.16),  # each pipeline's default
            )
        if own_sigmas:
            grid = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
            scheduler.set_timesteps(sigmas=grid, mu=mu)
        else:
            scheduler.set_timesteps(num_inference_steps, mu=mu)
        self.scheduler = scheduler
        self._u = [float(u) for u in scheduler.sigmas[:-1]]
        self.timesteps = [float(t) for t in scheduler.timesteps]
        self.sigmas = [flow_sigma(u) for u in self._u]
        self._t = scheduler.timesteps

    def start(self, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def first_step(self, strength: float) -> int:
        """The first step a strength runs (Flux and SD3 img2img: from ``int(N - N s)``)."""
        n = len(self.timesteps)
        return int(max(n - min(n * strength, n), 0))

    def begin(self, i: int) -> None:
        self.scheduler.set_begin_index(i)

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """``(1 - u) x0 + u noise`` at step ``i`` (the scheduler's ``scale_noise``)."""
        return self.scheduler.scale_noise(x0, self._t[i : i + 1], noise)

    def view(self, latents: torch.Tensor, i: int) -> torch.Tensor:
        u = self._u[i]
        return latents / math.sqrt((1 - u) ** 2 + u**2)

    def step(self, latents: torch.Tensor, y: torch.Tensor, x0: torch.Tensor, i: int):
        velocity = (latents - x0) / self._u[i]
        return self.scheduler.step(velocity, self._t[i], latents).prev_sample


class FlowSolverGrid(FlowGrid):
    """A multistep solver on flow sigmas as the folder's scheduler runs it (``WanPipeline``'s
    UniPC): its own shifted grid from ``u`` just below 1, integer timesteps, stepped with
    the velocity ``(z - x0) / u`` (its ``flow_prediction``)."""

    def __init__(self, scheduler: UniPCMultistepScheduler, num_inference_steps: int):
        scheduler.set_timesteps(num_inference_steps)
        scheduler.set_begin_index(0)  # as WanPipeline sets it
        self.scheduler = scheduler
        self._u = [float(u) for u in scheduler.sigmas[:-1]]
        self.timesteps = [float(t) for t in scheduler.timesteps]
        self.sigmas = [flow_sigma(u) for u in self._u]
        self._t = scheduler.timesteps

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        u = self._u[i]
        return (1 - u) * x0 + u * noise


Grid = SchedulerGrid | FlowGrid


def trajectory(
    scheduler: SchedulerMixin,
    num_inference_steps: int,
    latent_hw: tuple[int, int],
    family=None,
    generator=None,
) -> Grid:
    """The canvas trajectory a fresh scheduler gives, as the canvas expert's pipeline runs it
    (``family``: the canvas expert's, whose pipeline may pass its own sigma grid, as
    Flux.1's does, and have its own shift rule)."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        config, steps = scheduler.config, num_inference_steps
        mu = None if family is None else family.flow_mu(config, latent_hw, steps)
        own = bool(family and family.own_sigmas)
        return FlowGrid(scheduler, num_inference_steps, latent_hw, own, mu)
    if scheduler.config.get("use_flow_sigmas"):
        return FlowSolverGrid(scheduler, num_inference_steps)
    return SchedulerGrid(scheduler, num_inference_steps, generator)


def own_sampler(training_config: dict) -> str:
    """The sampler a model's own pipeline steps with where pangu-draw's default would not
    (Wan's UniPC on flow sigmas), else pangu-draw's default."""
    from .options import DEFAULT_SAMPLER

    return "unipc" if training_config.get("use_flow_sigmas") else DEFAULT_SAMPLER


def canvas_grid(
    participants: list[Participant], scheduler, num_inference_steps: int, canvas, generator=None
) -> Grid:
    """``scheduler`` as the canvas's trajectory (a grid passed in is kept), run as the
    pipeline of the first expert on the canvas runs it."""
    if isinstance(scheduler, Grid):
        return scheduler
    on = [p.expert.family for p in participants if p.site(canvas).same_as(canvas)]
    latent_hw = tuple(canvas.latent_shape(1)[-2:])
    return trajectory(scheduler, num_inference_steps, latent_hw, on[0] if on else None, generator)


@dataclass
class _OffCanvas:
    """An expert working off the canvas: its own latents (unit view) at its own site, its
    last estimate bridged to the canvas, and the step at which it runs next."""

    y: torch.Tensor
    next_run: int
    bridged: torch.Tensor | None = None


def sample(
    participants: list[Participant],
    scheduler: SchedulerMixin | Grid,
    noise: torch.Tensor,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: Callable[[Step], None] | None = None,
    canvas: Site | None = None,
    noise_policy: NoisePolicy = "carry",
    bridge_every: int = 1,
    move: Callable[[torch.Tensor, Site, Site], torch.Tensor] = exact_bridge,
    start: Start | None = None,
) -> torch.Tensor:
    """Run the Coop-Diffusion loop and return the clean canvas latents.

    Args:
        participants: the experts taking part.
        scheduler: a fresh sampler from :func:`make_scheduler` (then the canvas expert's
            pipeline's trajectory, see :func:`trajectory`), or a grid built already.
        noise: (B, C, h, w) standard normal noise at the canvas latent shape.
        num_inference_steps: number of sampler steps.
        generator: for ancestral samplers and for the noise of experts off the canvas.
        callback: called after every step with a :class:`Step`.
        canvas: the canvas site; by default the first participant's space at the noise's size.
        noise_policy: how experts off the canvas step (module docstring).
        bridge_every: experts off the canvas run (and are bridged) every this many steps;
            in between the canvas fuses their last bridged estimate. 1 is the exact loop.
        move: moves a clean estimate between sites (a :class:`pangudraw.bridge.BridgePolicy`
            for learned bridges; the exact bridge by default).
        start: where a generation from a picture starts (:class:`Start`); None starts
            from pure noise at the first step.

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
    grid = canvas_grid(participants, scheduler, num_inference_steps, canvas, generator)
    sigmas = grid.sigmas
    first = 0 if start is None else start.first
    weight_maps = _latent_masks(participants, tuple(noise.shape[-2:]))
    check_coverage(participants, sigmas[first:], weight_maps)
    if first == 0:  # (from a picture, a structure expert may have nothing left to do)
        check_every_expert_runs(participants, sigmas)

    latents = grid.start(noise)
    off: dict[int, _OffCanvas] = {}  # experts working off the canvas, by participant index
    x0 = None
    if start is not None:  # from a picture: its latents are the first estimate
        grid.begin(first)
        if not start.pure:
            latents = grid.noised(start.init, noise, first)
        x0 = start.init
    for i in range(first, len(sigmas)):
        sigma = sigmas[i]
        y = grid.view(latents, i)
        # 1. The active experts.
        active = [k for k, p in enumerate(participants) if p.active(sigma)]
        for k in [k for k in off if k not in active]:
            del off[k]  # re-enters by re-sampling if it becomes active again
        _release_idle(participants, active)
        estimates = []
        for k in active:
            p, site = participants[k], sites[k]
            if p.expert.family.picture_condition is not None and p.cond.extra is None:
                p.cond = _picture_so_far(p, x0, noise, on_canvas[k])
            step = 1 if on_canvas[k] else bridge_every  # where this expert's step ends
            p.expert.next_sigma = sigmas[i + step] if i + step < len(sigmas) else 0.0
            if on_canvas[k]:
                t = grid.timesteps[i] if p.expert.family.grid_timesteps else None
                x0_k = p.expert.predict(y, sigma, p.cond, p.guidance_scale, p.controls, t)
                estimates.append(x0_k)
                continue
            # 2. Entry by noise re-sampling (pure noise before any estimate exists).
            if k not in off:
                if x0 is None:
                    shape = site.latent_shape(noise.shape[0])
                    pure = randn_tensor(shape, generator=generator, dtype=noise.dtype)
                    off[k] = _OffCanvas(pure, i)
                else:
                    off[k] = _OffCanvas(renoise(move(x0, canvas, site), sigma, generator), i)
            # 3. Prediction in the expert's own space, bridged to the canvas.
            state = off[k]
            if state.next_run == i:
                x0_k = p.expert.predict(state.y, sigma, p.cond, p.guidance_scale, p.controls)
                state.bridged = move(x0_k, site, canvas)
            estimates.append(state.bridged)
        # 4. Fusion on x0.
        x0 = fuse(estimates, [weight_maps[k] for k in active])
        # 5. The canvas steps; experts that ran off the canvas step, in their own spaces, to
        # the noise level of their next run (a DDIM step can jump several sampler steps)
        # around the fused x0.
        latents = grid.step(latents, y, x0, i)
        if start is not None and start.mask is not None:  # the known region, put back
            known = start.init if i + 1 == len(sigmas) else grid.noised(start.init, noise, i + 1)
            latents = (1 - start.mask) * known + start.mask * latents
        for k, state in off.items():
            if state.next_run != i:
                continue
            state.next_run = i + bridge_every
            sigma_next = sigmas[state.next_run] if state.next_run < len(sigmas) else 0.0
            if sigma_next == 0.0:
                continue
            target = move(x0, canvas, sites[k])
            if noise_policy == "carry":
                state.y = noisy(target, noise_of(state.y, target, sigma), sigma_next)
            else:
                state.y = renoise(target, sigma_next, generator)
        if callback is not None:
            at = (i - first, len(sigmas) - first, grid.timesteps[i], sigma)
            resident = [k for k, p in enumerate(participants) if p.expert.resident]
            callback(Step(*at, x0, latents, active, canvas, resident))
    _release_idle(participants, [])
    return latents


def _picture_so_far(p: Participant, x0: torch.Tensor | None, noise, on_canvas: bool):
    """A model that draws beside a picture (HunyuanImage's refiner) taking over the canvas:
    its picture is the canvas's estimate so far, noised to the level its pipeline gives a
    picture, with the loop's own noise."""
    if x0 is None or not on_canvas:
        raise UserError(
            f"{p.expert.name} refines a picture: it takes over the canvas from a model that "
            "draws (as the texture model of a pair), or refines a picture you give"
        )
    level = p.expert.family.picture_condition
    return replace(p.cond, extra=level * noise + (1 - level) * x0)


def _release_idle(participants: list[Participant], active: list[int]) -> None:
    """Experts that no active participant uses leave working memory (with offloading:
    :mod:`pangudraw.offload`; they come back on their next prediction), before the active
    ones predict, so the one closing its window and the one opening theirs are never
    both held."""
    needed = {id(participants[k].expert) for k in active}
    for p in participants:
        if id(p.expert) not in needed:
            p.expert.release()
