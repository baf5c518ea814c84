"""User-facing generation built from experts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .bridge import Site, native_size
from .coop import NoisePolicy, Participant, Step, make_scheduler, sample
from .errors import UserError
from .experts import Conditioning, Expert

DEFAULT_SPLIT = 500  # PanGu-Draw v3: structure on t in [500, 1000), texture on [0, 500).


@dataclass
class GenerationOutput:
    """Images (B, 3, H, W) in [0, 1], the canvas latents they decode from, and the seeds."""

    images: torch.Tensor
    latents: torch.Tensor
    seeds: list[int]

    def to_pil(self) -> list[Image.Image]:
        arrays = (self.images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        return [Image.fromarray(a) for a in arrays]


def _encoder(cache: dict, expert: Expert, prompts, negatives, guidance_scale, size) -> Conditioning:
    """Encode once per text stack: experts that share encoders share the embeddings."""
    key = (id(expert.text), guidance_scale > 1.0, size)
    if key not in cache:
        cache[key] = expert.encode_prompt(prompts, negatives, guidance_scale, size)
    return cache[key]


def split_sigma(expert: Expert, t_split: float) -> float:
    """The noise level of training timestep ``t_split`` on ``expert``'s schedule."""
    last = expert.schedule.num_train_timesteps
    if not 0 < t_split < last:
        raise UserError(f"split {t_split:g} is outside (0, {last}); give a timestep in between")
    return expert.schedule.t_to_sigma(t_split)


@torch.inference_mode()
def generate(
    structure: Expert,
    texture: Expert | None,
    prompt: str,
    negative_prompt: str | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.0,
    seed: int = 0,
    width: int | None = None,
    height: int | None = None,
    sampler: str = "euler",
    t_split: float = DEFAULT_SPLIT,
    num_images: int = 1,
    callback: Callable[[Step], None] | None = None,
    noise_policy: NoisePolicy = "carry",
) -> GenerationOutput:
    """Time-decoupled generation: ``structure`` for sigma >= sigma(t_split), ``texture`` below.

    With ``texture=None`` this is plain single-model sampling. The split is a timestep on
    the structure expert's training schedule and is applied on the noise level. Image
    ``i`` uses seed ``seed + i``, so every image can be reproduced on its own.

    The canvas is the texture expert's latent space at the output size (its native size
    by default). The structure expert works at its own native resolution (at the output's
    aspect ratio) unless it shares the texture expert's space and native size; then it
    works on the canvas itself and nothing is bridged.
    """
    if num_inference_steps < 1:
        raise UserError(f"steps must be at least 1, got {num_inference_steps}")
    if num_images < 1:
        raise UserError(f"num-images must be at least 1, got {num_images}")
    owner = texture or structure
    height = height or owner.sample_size[0]
    width = width or owner.sample_size[1]
    canvas = Site(owner.space, (height, width))
    try:
        shape = canvas.latent_shape(num_images)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    scheduler = make_scheduler(sampler, owner.scheduler_config)

    prompts = [prompt] * num_images
    negatives = None if negative_prompt is None else [negative_prompt] * num_images
    cache: dict = {}
    size = (height, width)
    participants = [
        Participant(
            structure,
            _encoder(cache, structure, prompts, negatives, guidance_scale, size),
            guidance_scale,
        )
    ]
    if texture is not None:
        sigma_split = split_sigma(structure, t_split)
        participants[0].window = (sigma_split, math.inf)
        shared = structure.space.same_as(owner.space) and structure.sample_size == owner.sample_size
        if not shared:
            participants[0].size = native_size(
                structure.sample_size, (height, width), structure.size_multiple
            )
        participants.append(
            Participant(
                texture,
                _encoder(cache, texture, prompts, negatives, guidance_scale, size),
                guidance_scale,
                window=(0.0, sigma_split),
            )
        )

    seeds = [seed + i for i in range(num_images)]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    noise = randn_tensor(shape, generator=generators, dtype=torch.float32)
    latents = sample(
        participants,
        scheduler,
        noise,
        num_inference_steps,
        generators,
        callback,
        canvas,
        noise_policy,
    )
    images = (canvas.space.decode(latents).float() / 2 + 0.5).clamp(0, 1)
    return GenerationOutput(images, latents, seeds)
