"""User-facing generation built from experts: time-decoupled pairs and Coop recipes.

Design: docs/design.md, section 5.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .bridge import BridgePolicy, Site, native_size
from .coop import (
    NoisePolicy,
    Participant,
    Start,
    Step,
    canvas_grid,
    make_scheduler,
    own_sampler,
    sample,
    trajectory,
)
from .editing import EditSpec, prepare
from .errors import UserError
from .expert import Control, Expert
from .families import Conditioning
from .families.pangu import handoff_index
from .imageio import read_image, read_picture, read_picture_pixels
from .limits import check_finite, check_memory, check_request, network_estimate
from .loading.models import ModelCache
from .noise import SigmaWindow
from .options import (
    DEFAULT_BRIDGE,
    DEFAULT_GUIDANCE,
    DEFAULT_SPLIT,
    DEFAULT_STEPS,
    HANDOFFS,
    check_choice,
)
from .recipes import Recipe, Window


@dataclass
class GenerationOutput:
    """Images (B, 3, H, W) in [0, 1], the canvas latents they decode from, and the seeds."""

    images: torch.Tensor
    latents: torch.Tensor
    seeds: list[int]
    bridges: dict[str, str] = field(default_factory=dict)  # which bridge ran, per space pair

    def to_pil(self) -> list[Image.Image]:
        arrays = (self.images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        return [Image.fromarray(a) for a in arrays]


class _PromptCache:
    """Encodes each (text encoders, prompts, guidance, size) once per generation; text
    stacks that declare themselves alike (``SDText.shared``) count as one."""

    def __init__(self) -> None:
        self.entries: dict = {}

    def __call__(
        self, expert, prompts, negatives, guidance, size, styles=(), true_cfg=1.0
    ) -> Conditioning:
        shared = getattr(expert.text, "shared", None)  # alike, and blind to the size
        text, size_key = (shared, None) if shared else (id(expert.text), size)
        key = (text, tuple(prompts), negatives and tuple(negatives), guidance > 1, size_key)
        key += (styles, true_cfg)
        if key not in self.entries:
            self.entries[key] = expert.encode_prompt(
                prompts, negatives, guidance, size, styles, true_cfg
            )
        return self.entries[key]


def split_sigma(expert: Expert, t_split: float) -> float:
    """The noise level of training timestep ``t_split`` on ``expert``'s schedule."""
    last = expert.schedule.num_train_timesteps
    if not 0 < t_split < last:
        raise UserError(f"split {t_split:g} is outside (0, {last}); give a timestep in between")
    return expert.schedule.t_to_sigma(t_split)


def working_size(expert: Expert, canvas_expert: Expert, canvas: Site) -> tuple[int, int]:
    """The canvas size for the canvas expert and its twins, else the expert's native size."""
    if expert is canvas_expert or (
        expert.space.same_as(canvas_expert.space)
        and expert.sample_size == canvas_expert.sample_size
    ):
        return canvas.size
    return native_size(expert.sample_size, canvas.size, expert.size_multiple)


def _canvas(canvas_expert: Expert, height: int | None, width: int | None, batch: int) -> Site:
    canvas = Site(
        canvas_expert.space,
        (height or canvas_expert.sample_size[0], width or canvas_expert.sample_size[1]),
    )
    try:
        canvas.latent_shape(batch)  # the VAE factor (all a UNet needs)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    multiple = canvas_expert.size_multiple  # transformers: times the patch
    if canvas.size[0] % multiple or canvas.size[1] % multiple:
        raise UserError(
            f"size {canvas.size[1]}x{canvas.size[0]} does not fit {canvas_expert.name}'s latent "
            f"patches; use a multiple of {multiple} on both sides"
        )
    return canvas


def _check_steps(steps: int, canvas_expert: Expert) -> None:
    last = canvas_expert.schedule.num_train_timesteps
    if steps > last:
        raise UserError(
            f"steps {steps} exceed the {last} training timesteps of {canvas_expert.name}"
        )


def _check_memory(participants: list[Participant], canvas: Site, batch: int) -> None:
    """Refuse, before sampling, a request that cannot fit in this machine's memory."""
    decoder = canvas.space.decoder_width
    height, width = canvas.size
    worst = 0.0
    for p in participants:
        h, w = p.size or canvas.size
        factor = p.expert.space.factor
        tokens = (h // factor) * (w // factor)
        channels = p.expert.feature_width
        estimate = network_estimate(batch, tokens, channels, p.cond.guided, height * width, decoder)
        worst = max(worst, estimate)
    check_memory(worst, f"{batch} image(s) of {width}x{height}")


def _run(
    participants: list[Participant],
    canvas: Site,
    scheduler,
    num_inference_steps: int,
    seeds: list[int],
    callback: Callable[[Step], None] | None,
    noise_policy: NoisePolicy,
    bridge_every: int = 1,
    policy: BridgePolicy | None = None,
    edit: EditSpec | None = None,
) -> GenerationOutput:
    policy = policy or BridgePolicy()
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    shape = canvas.latent_shape(len(seeds))
    start = None
    if edit is None:
        _check_draws_from_noise(participants)
        noise = randn_tensor(shape, generator=generators)
    else:
        grid = canvas_grid(participants, scheduler, num_inference_steps, canvas, generators)
        scheduler, (noise, start) = grid, _start(edit, participants, canvas, grid, generators)
    latents = sample(
        participants,
        scheduler,
        noise,
        num_inference_steps,
        generators,
        callback,
        canvas,
        noise_policy,
        bridge_every,
        policy,
        start,
    )
    images = (canvas.space.decode(latents).float() / 2 + 0.5).clamp(0, 1)
    return GenerationOutput(images, latents, seeds, dict(policy.used))


def _check_draws_from_noise(participants: list[Participant]) -> None:
    """Refuse, without a picture, the models that only work from one (a refiner that is
    not taking over from another model, a dedicated inpainting model)."""
    for p in participants:
        if p.expert.family.picture_condition is not None and p.active(math.inf):
            raise UserError(
                f"{p.expert.name} refines a picture: give one (--init-image), or let it take "
                "over from a model that draws (as the texture model of a pair)"
            )
        if p.expert.inpainting:
            raise UserError(
                f"{p.expert.name} is an inpainting model: it repaints a picture; give an init "
                "image and a mask (--init-image, --mask)"
            )


def _start(
    spec: EditSpec, participants: list[Participant], canvas: Site, grid, generators: list
) -> tuple[torch.Tensor, Start]:
    """The loop's noise and start for a generation from a picture, drawn as diffusers'
    img2img and inpaint pipelines draw them with each image's generator: the picture's
    posterior (unless a dedicated inpainting model repaints at full strength), the noise,
    the masked picture's posterior (inpainting)."""
    import torch.nn.functional as F

    edit = prepare(spec, canvas.size, canvas.space.factor)
    conditioned = [p for p in participants if p.expert.family.picture_condition is not None]
    if conditioned:
        return _picture_start(edit, conditioned, canvas, generators)
    first = grid.first_step(edit.strength)
    steps = len(grid.sigmas)
    if first >= steps:
        raise UserError(
            f"strength {edit.strength:g} runs none of the {steps} steps; raise the strength or "
            "the steps"
        )
    on_canvas = [p for p in participants if p.site(canvas).same_as(canvas)]
    model = on_canvas[0].expert if on_canvas else participants[0].expert
    for p in participants:
        if p.expert.inpainting and p not in on_canvas:
            raise UserError(f"inpainting model {p.expert.name} must work on the canvas")
        if p.expert.inpainting and edit.mask is None:
            _check_draws_from_noise([p])
    full = edit.mask is not None and edit.strength == 1
    encode = canvas.space.encode
    init = None
    if not (full and model.inpainting) or model.family.encodes_picture_at_full_strength:
        init = torch.cat([encode(edit.image, generator=g) for g in generators])
    noise = randn_tensor(canvas.latent_shape(len(generators)), generator=generators)
    blend = None
    if edit.mask is not None:
        masked = edit.image * (edit.binary < 0.5)
        masked = torch.cat([encode(masked, generator=g) for g in generators])
        hw = tuple(noise.shape[-2:])
        if model.inpainting:  # the mask and the masked picture go in as channels
            binary = edit.binary.expand(len(generators), -1, -1, -1)
            for p in participants:
                if p.expert.inpainting:
                    extra = p.expert.family.inpaint_inputs(binary, masked)
                    p.cond = replace(p.cond, extra=extra)
        else:  # the known region is put back after each step
            blend = F.interpolate(
                edit.mask, size=hw, mode="nearest" if edit.mask is edit.binary else "area"
            )
    return noise, Start(first, init, pure=full, mask=blend)


def _picture_start(edit, conditioned: list[Participant], canvas: Site, generators: list):
    """A model that draws beside a picture's latents (HunyuanImage's refiner), as its
    pipeline draws: the picture's posterior, the noise it starts from, the noise that
    takes the picture to its condition level; every step runs (no strength)."""
    if edit.mask is not None:
        raise UserError(f"{conditioned[0].expert.name} refines a whole picture; it takes no mask")
    if any(not p.site(canvas).same_as(canvas) for p in conditioned):
        raise UserError(f"{conditioned[0].expert.name} must work on the canvas")
    init = torch.cat([canvas.space.encode(edit.image, generator=g) for g in generators])
    shape = canvas.latent_shape(len(generators))
    noise = randn_tensor(shape, generator=generators)
    level = conditioned[0].expert.family.picture_condition
    picture = level * randn_tensor(shape, generator=generators) + (1 - level) * init
    for p in conditioned:
        p.cond = replace(p.cond, extra=picture)
    return noise, Start(0, init, pure=True)


@torch.inference_mode()
def generate(
    structure: Expert,
    texture: Expert | None,
    prompt: str | list[str],
    *,
    negative_prompt: str | None = None,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    width: int | None = None,
    height: int | None = None,
    sampler: str | None = None,
    t_split: float | None = None,
    num_images: int = 1,
    callback: Callable[[Step], None] | None = None,
    noise_policy: NoisePolicy = "carry",
    styles: tuple[tuple[str, float], ...] = (),
    handoff: str = "sigma",
    bridge: str = DEFAULT_BRIDGE,
    true_cfg: float = 1.0,
    edit: EditSpec | None = None,
    guidance_scale_2: float | None = None,
) -> GenerationOutput:
    """Time-decoupled generation: ``structure`` for sigma >= sigma(t_split), ``texture`` below.

    A model that is a pair on its own (Wan2.2's folder: ``structure.low_noise``) given
    without a texture model is its own pair, split at its boundary unless ``t_split`` says
    otherwise; ``t_split`` None is that boundary, else pangu-draw's default split.
    ``guidance_scale_2`` guides the texture expert (default: ``guidance_scale``), as
    ``WanPipeline``'s ``guidance_scale_2`` its low-noise expert. ``sampler`` None is the
    canvas model's own (Wan's UniPC), else pangu-draw's default.

    With ``texture=None`` this is plain single-model sampling. The split is a timestep on
    the structure expert's training schedule and is applied on the noise level. Image
    ``i`` uses seed ``seed + i``, so every image can be reproduced on its own. ``prompt``
    may be a list of ``num_images`` prompts, one per image (a batch of different prompts).

    The canvas is the texture expert's latent space at the output size (its native size
    by default). The structure expert works at its own native resolution (at the output's
    aspect ratio) unless it shares the texture expert's space and native size; then it
    works on the canvas itself and nothing is bridged.

    ``bridge`` is how the structure expert's estimates reach the canvas when their spaces
    differ: "exact" (decode, resize, encode) or "learned" (a bundled translator where one
    was trained for the two spaces, exact otherwise).

    ``handoff="release"`` hands over as PanGu-Draw v3's sampler does: the structure expert
    also runs the first step whose timestep is below ``t_split`` (it runs while the previous
    step's timestep was >= ``t_split``). ``styles`` are PanGu-Draw v3 style branches.
    ``true_cfg`` > 1 is Flux's true classifier-free guidance for the Flux experts among the
    two (``guidance_scale`` stays their distilled guidance value).

    ``edit`` starts from a picture (:mod:`pangudraw.editing`): image to image at its
    strength, inpainting with its mask, outpainting when the picture is smaller than the
    output. Without a width and height the output takes the picture's size (rounded down
    to what the canvas model takes).
    """
    check_request(num_inference_steps, num_images, seed, width, height)
    if texture is None and structure.low_noise is not None:
        texture = structure.low_noise
        t_split = structure.boundary if t_split is None else t_split
    t_split = DEFAULT_SPLIT if t_split is None else t_split
    guidance_2 = guidance_scale if guidance_scale_2 is None else guidance_scale_2
    check_finite(guidance_scale, "guidance scale")
    check_finite(guidance_2, "second guidance scale")
    check_finite(true_cfg, "true CFG scale")
    check_finite(t_split, "split")
    canvas_expert = texture or structure
    sampler = own_sampler(canvas_expert.scheduler_config) if sampler is None else sampler
    if edit is not None and width is None and height is None:
        width, height = _picture_size(edit, canvas_expert)
    canvas = _canvas(canvas_expert, height, width, num_images)
    _check_steps(num_inference_steps, canvas_expert)
    scheduler = make_scheduler(sampler, canvas_expert.scheduler_config)
    prompts = [prompt] * num_images if isinstance(prompt, str) else list(prompt)
    if len(prompts) != num_images:
        raise UserError(f"{len(prompts)} prompts for {num_images} images; give one per image")
    negatives = None if negative_prompt is None else [negative_prompt] * num_images
    encode = _PromptCache()
    check_choice(handoff, HANDOFFS, "hand-off rule")
    roles = [(structure, SigmaWindow())]
    if texture is not None:
        sigma_split = split_sigma(structure, t_split)
        if handoff == "release":
            latent_hw = tuple(canvas.latent_shape(1)[-2:])
            family = canvas_expert.family
            scheduler = trajectory(scheduler, num_inference_steps, latent_hw, family)
            last_high = handoff_index(scheduler.timesteps, t_split) - 1
            sigma_split = scheduler.sigmas[last_high] if last_high >= 0 else math.inf
        roles = [(structure, SigmaWindow(sigma_split)), (texture, SigmaWindow(0.0, sigma_split))]
    if true_cfg != 1.0 and not any(expert.family.true_cfg for expert, _ in roles):
        raise UserError("true CFG is for Flux models; the others guide with the guidance scale")
    participants = []
    for k, (expert, window) in enumerate(roles):
        size = working_size(expert, canvas_expert, canvas)
        cfg = true_cfg if expert.family.true_cfg else 1.0  # the others guide with -g
        guidance = guidance_2 if k else guidance_scale
        cond = encode(expert, prompts, negatives, guidance, size, tuple(styles), cfg)
        participants.append(Participant(expert, cond, guidance, 1.0, window, size))
    seeds = [seed + i for i in range(num_images)]
    _check_memory(participants, canvas, num_images)
    return _run(
        participants,
        canvas,
        scheduler,
        num_inference_steps,
        seeds,
        callback,
        noise_policy,
        policy=BridgePolicy(bridge),
        edit=edit,
    )


def _picture_size(edit: EditSpec, expert: Expert) -> tuple[int, int]:
    """(width, height) of the init picture, rounded down to the model's size multiple."""
    from .editing import picture_size

    width, height = picture_size(edit.image)
    multiple = expert.size_multiple
    rounded = (
        max(multiple, width // multiple * multiple),
        max(multiple, height // multiple * multiple),
    )
    if rounded != (width, height):
        warnings.warn(
            f"the init image ({width}x{height}) is resized to {rounded[0]}x{rounded[1]}, "
            f"the nearest size {expert.name} takes",
            stacklevel=3,
        )
    return rounded


def sigma_window(window: Window, expert: Expert) -> SigmaWindow:
    """A recipe window on the shared sigma axis (``t`` windows use the expert's schedule)."""
    if window.unit == "sigma":
        return SigmaWindow(window.lo, window.hi)
    last = expert.schedule.num_train_timesteps
    if window.hi > last:
        raise UserError(
            f"window t = [{window.lo:g}, {window.hi:g}] of {expert.name} "
            f"goes beyond its {last} training timesteps"
        )
    lo = 0.0 if window.lo == 0 else expert.schedule.t_to_sigma(window.lo)
    hi = math.inf if window.hi >= last else expert.schedule.t_to_sigma(window.hi)
    return SigmaWindow(lo, hi)


def step_window(fractions: tuple[float, float], sigmas: list[float]) -> SigmaWindow:
    """diffusers' ``control_guidance_start`` / ``_end`` on a trajectory: the steps i of N
    with ``start <= i / N`` and ``(i + 1) / N <= end``, as the sigma window that holds
    exactly their noise levels (``sigmas`` decrease)."""
    start, end = fractions
    n = len(sigmas)
    steps = [i for i in range(n) if start <= i / n and (i + 1) / n <= end]
    if not steps:
        return SigmaWindow(0.0, 0.0)  # holds no noise level
    first, last = steps[0], steps[-1]
    return SigmaWindow(sigmas[last], math.inf if first == 0 else sigmas[first - 1])


def control_image(spec, size: tuple[int, int]) -> torch.Tensor:
    """The control image of a recipe control: given, or computed from its source image."""
    if spec.image is not None:
        return read_picture(spec.image, size, "control image")
    from .controls import ControlTransform
    from .loading.paths import resolve_model

    transform = ControlTransform.load(resolve_model(spec.model))
    if transform is None:
        raise UserError(
            f"ControlNet {spec.model} has no control.json, so it cannot turn a "
            "source image into a control image; give image instead of source"
        )
    return transform(read_picture_pixels(spec.source, size, "source image"))


@torch.inference_mode()
def coop_generate(
    recipe: Recipe,
    callback: Callable[[Step], None] | None = None,
    allow_pickle: bool = False,
    models: ModelCache | None = None,
) -> GenerationOutput:
    """Run a Coop recipe: every expert in its own space and resolution, one fused loop.

    ``models`` (a :class:`pangudraw.loading.models.ModelCache`) shares loaded models
    between calls.
    """
    check_request(recipe.steps, 1, recipe.seed, recipe.width, recipe.height)
    loaded: dict[tuple, Expert] = {}  # one loaded expert per model and set of LoRAs
    for spec in recipe.experts:
        for lora in spec.loras:
            lora.check(allow_pickle)
    if models is None:
        models = ModelCache(allow_pickle)
    for spec in recipe.experts:
        key = (spec.model, tuple(spec.loras), spec.denoiser)
        if key not in loaded:
            loaded[key] = models.get(*key)

    def expert_of(spec) -> Expert:
        return loaded[spec.model, tuple(spec.loras), spec.denoiser]

    canvas_spec = next(
        (s for s in recipe.experts if s.name == recipe.canvas_expert), recipe.experts[0]
    )
    canvas_expert = expert_of(canvas_spec)
    width, height = recipe.width, recipe.height
    if recipe.edit is not None and width is None and height is None:
        width, height = _picture_size(recipe.edit, canvas_expert)
    canvas = _canvas(canvas_expert, height, width, 1)
    _check_steps(recipe.steps, canvas_expert)
    scheduler = make_scheduler(recipe.sampler, canvas_expert.scheduler_config)
    latent_hw = tuple(canvas.latent_shape(1)[-2:])
    sigmas = trajectory(
        make_scheduler(recipe.sampler, canvas_expert.scheduler_config),
        recipe.steps,
        latent_hw,
        canvas_expert.family,
    ).sigmas  # the trajectory the loop will run, for windows given in steps
    encode = _PromptCache()
    participants = []
    for spec in recipe.experts:
        expert = expert_of(spec)
        size = spec.size or working_size(expert, canvas_expert, canvas)
        if size[0] % expert.size_multiple or size[1] % expert.size_multiple:
            raise UserError(
                f"size {list(size)} of expert {spec.name} is not a multiple of "
                f"{expert.size_multiple} on both sides"
            )
        mask = None if spec.mask is None else read_image(spec.mask, "L", canvas.size, "mask")
        controls = [
            Control(
                models.controlnet(c.model, expert),
                control_image(c, size),
                c.scale,
                sigma_window(c.window, expert) if c.steps is None else step_window(c.steps, sigmas),
            )
            for c in spec.controls
        ]
        negatives = None if spec.negative_prompt is None else [spec.negative_prompt]
        cond = encode(expert, [spec.prompt], negatives, spec.guidance, size, (), spec.true_cfg)
        participants.append(
            Participant(
                expert,
                cond,
                spec.guidance,
                spec.weight,
                sigma_window(spec.window, expert),
                size,
                mask,
                controls,
            )
        )
    _check_memory(participants, canvas, 1)
    return _run(
        participants,
        canvas,
        scheduler,
        recipe.steps,
        [recipe.seed],
        callback,
        recipe.noise,
        recipe.bridge_every,
        BridgePolicy(recipe.bridge),
        recipe.edit,
    )
