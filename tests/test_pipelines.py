"""Our loop against diffusers' own pipelines on identical components, scheduler and seed.

Guidance is 2 here: the random tiny UNets are chaotic under strong guidance (a 1e-6 nudge
of diffusers' own initial latents moves its output by ~7e-4 at guidance 5), so float
rounding alone would exceed the 1e-4 tolerance there; at 2 diffusers' own sensitivity is
below the tolerance and any real difference shows.
"""

import math

import pytest
import torch
from diffusers import (
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from equality import PROMPT, TOL, reference, single  # noqa: E402
from pangudraw.coop import SAMPLERS, Participant, make_scheduler, sample
from pangudraw.errors import UserError
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate


@pytest.mark.parametrize("sampler", ["euler", "ddim", "euler_a"])
@pytest.mark.parametrize("t_split", [500, 700])
def test_structure_texture_equals_sdxl_base_plus_refiner(models, sampler, t_split):
    structure = load_expert(models["sdxl"])
    texture = load_expert(models["sdxl"])
    steps, guidance = 10, 2.0
    ours = generate(
        structure,
        texture,
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=3,
        sampler=sampler,
        t_split=t_split,
    ).images

    base = StableDiffusionXLPipeline.from_pretrained(models["sdxl"])
    base.scheduler = SAMPLERS[sampler].from_config(base.scheduler.config)
    base.set_progress_bar_config(disable=True)
    refiner = StableDiffusionXLImg2ImgPipeline(**base.components)
    refiner.scheduler = SAMPLERS[sampler].from_config(base.scheduler.config)
    refiner.set_progress_bar_config(disable=True)
    f = 1 - t_split / 1000
    generator = torch.Generator().manual_seed(3)
    common = dict(num_inference_steps=steps, guidance_scale=guidance, generator=generator)
    latents = base(PROMPT, denoising_end=f, output_type="latent", **common).images
    theirs = refiner(PROMPT, image=latents, denoising_start=f, output_type="pt", **common).images
    assert (ours - theirs).abs().max() <= TOL


def test_two_copies_with_half_weights_equal_one_model(models):
    expert = load_expert(models["sd"])
    copy = load_expert(models["sd"])
    cond = expert.encode_prompt([PROMPT], None, 2.0)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def run(participants):
        scheduler = make_scheduler("dpmpp_2m", expert.scheduler_config)
        return sample(participants, scheduler, noise, 8)

    one = run([Participant(expert, cond, 2.0)])
    two = run([Participant(expert, cond, 2.0, 0.5), Participant(copy, cond, 2.0, 0.5)])
    assert one.abs().max() > 0.1
    torch.testing.assert_close(two, one, atol=1e-5, rtol=0)


def test_a_different_expert_changes_the_result(models):
    """The split matters: texture from another model gives another image (the test can fail)."""
    a, b = load_expert(models["sd"]), load_expert(models["sd_other"])
    alone = generate(a, None, PROMPT, num_inference_steps=8, guidance_scale=2.0, seed=3).images
    split = generate(a, b, PROMPT, num_inference_steps=8, guidance_scale=2.0, seed=3).images
    assert (alone - split).abs().max() > 1e-2


def test_expert_is_active_only_in_its_window(models):
    expert = load_expert(models["sd"])
    cond = expert.encode_prompt([PROMPT])
    seen = []
    high = Participant(expert, cond, window=(1.0, math.inf))
    low = Participant(expert, cond, window=(0.0, 1.0))
    scheduler = make_scheduler("euler", expert.scheduler_config)
    sample([high, low], scheduler, torch.randn(1, 4, 8, 8), 10, callback=seen.append)
    for step in seen:
        assert step.active == ([0] if step.sigma >= 1.0 else [1])
    assert {tuple(s.active) for s in seen} == {(0,), (1,)}


def test_gap_in_windows_is_an_error(models):
    expert = load_expert(models["sd"])
    cond = expert.encode_prompt([PROMPT])
    high = Participant(expert, cond, window=(2.0, math.inf))
    low = Participant(expert, cond, window=(0.0, 1.0))
    scheduler = make_scheduler("euler", expert.scheduler_config)
    with pytest.raises(UserError, match=r"no expert is active for sigma in \[1"):
        sample([high, low], scheduler, torch.randn(1, 4, 8, 8), 10)


def test_generation_is_deterministic_and_seed_dependent(models):
    expert = load_expert(models["sd"])
    first = generate(
        expert, None, PROMPT, num_inference_steps=5, guidance_scale=2.0, seed=7, num_images=2
    )
    again = generate(
        expert, None, PROMPT, num_inference_steps=5, guidance_scale=2.0, seed=7, num_images=2
    )
    assert torch.equal(first.images, again.images)
    assert first.seeds == [7, 8]
    # Image i of a batch is the image of seed + i alone.
    single = generate(
        expert, None, PROMPT, num_inference_steps=5, guidance_scale=2.0, seed=8
    ).images
    assert (first.images[1] - single[0]).abs().max() <= TOL
    assert (first.images[0] - first.images[1]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inference_steps": 0}, r"steps must be an integer in \[1, 1000\]"),
        ({"width": 15}, "not divisible by the VAE factor 2"),
        ({"t_split": 1000}, r"outside \(0, 1000\)"),
        ({"t_split": 0}, r"outside \(0, 1000\)"),
        ({"sampler": "plms"}, "unknown sampler 'plms'"),
    ],
)
def test_bad_arguments_are_user_errors(models, kwargs, message):
    expert = load_expert(models["sd"])
    with pytest.raises(UserError, match=message):
        generate(expert, expert, PROMPT, **kwargs)


def test_odd_latent_sizes_equal_diffusers_and_coop_accepts_them(models, tmp_path):
    """40x24 px is a 10x6 latent under this VAE: no multiple of the UNet's 4x downsampling,
    which diffusers takes (it forwards the upsampling sizes); so do generate and a
    one-expert recipe (SD 1.5 at 520 px, in small)."""
    from pangudraw.pipelines import coop_generate
    from pangudraw.recipes import parse_recipe

    expert = load_expert(models["sd_deep"])
    settings = dict(num_inference_steps=4, guidance_scale=2.0, height=40, width=24)
    ours = single(expert, "euler", **settings)
    pipe = StableDiffusionPipeline.from_pretrained(models["sd_deep"])
    theirs = reference(pipe, "euler", **settings)
    assert ours.shape[-2:] == (40, 24) and ours.std() > 0.01
    assert (ours - theirs).abs().max() <= TOL
    table = {
        "prompt": PROMPT,
        "seed": 3,
        "steps": 4,
        "guidance": 2.0,
        "canvas": {"width": 24, "height": 40},
        "experts": [{"model": str(models["sd_deep"])}],
    }
    coop = coop_generate(parse_recipe(table, "r.toml", tmp_path)).images
    assert torch.equal(coop, ours)
