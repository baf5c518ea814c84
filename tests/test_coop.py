"""Coop-Diffusion: experts in different spaces, resolutions, schedules, controls and masks."""

import math

import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

from pangudraw.bridge import Site
from pangudraw.coop import Participant, check_coverage, fuse, make_scheduler, sample
from pangudraw.errors import UserError
from pangudraw.expert import Control
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import coop_generate, generate
from pangudraw.recipes import ExpertSpec, Recipe, Window, parse_recipe

PROMPT = "a red apple"


def spec(name, model, **kwargs) -> ExpertSpec:
    return ExpertSpec(name=name, model=str(model), prompt=PROMPT, guidance=2.0, **kwargs)


def test_shared_site_coop_never_calls_a_vae_and_equals_the_core_loop(models, monkeypatch):
    structure, texture = load_expert(models["sdxl"]), load_expert(models["sdxl"])
    expected = generate(
        structure, texture, PROMPT, num_inference_steps=8, guidance_scale=2.0, seed=3
    ).images
    calls = []
    for expert in (structure, texture):
        vae = expert.space.vae
        monkeypatch.setattr(vae, "encode", lambda *a, **k: calls.append("encode"))
    # Sampling only: the final decode is the one VAE call.
    result = generate(
        structure, texture, PROMPT, num_inference_steps=8, guidance_scale=2.0, seed=3
    ).images
    assert calls == []
    assert torch.equal(result, expected)


def test_two_spaces_and_resolutions_run_end_to_end_deterministically(models):
    recipe = Recipe(
        experts=[
            spec("low", models["sd_b"], window=Window("t", 400, 1000)),  # 32 px, 8ch at 1/4
            spec("canvas", models["sd"], window=Window("t", 0, 600)),  # 4ch at 1/2
        ],
        width=48,
        height=32,
        canvas_expert="canvas",
        steps=6,
        seed=11,
    )
    seen = []
    first = coop_generate(recipe, callback=seen.append)
    again = coop_generate(recipe)
    assert first.images.shape == (1, 3, 32, 48)  # another size and aspect than any expert's
    assert torch.equal(first.images, again.images)
    assert {tuple(s.active) for s in seen} == {(0,), (0, 1), (1,)}
    # The bridged expert matters: without it the image differs.
    alone = coop_generate(
        Recipe(experts=[spec("canvas", models["sd"])], width=48, height=32, steps=6, seed=11)
    )
    assert (first.images - alone.images).abs().max() > 1e-2


def test_eps_and_v_experts_fuse_and_weight_zero_is_the_single_expert(models):
    eps_only = Recipe(experts=[spec("eps", models["sd"])], steps=6, seed=2)
    mixed = Recipe(
        experts=[spec("eps", models["sd"]), spec("v", models["sd_v"], weight=0.0)], steps=6, seed=2
    )
    assert torch.equal(coop_generate(mixed).images, coop_generate(eps_only).images)
    mixed.experts[1].weight = 1.0
    fused = coop_generate(mixed).images
    assert (fused - coop_generate(eps_only).images).abs().max() > 1e-2


def test_experts_trained_on_different_beta_schedules_share_the_sigma_axis(models):
    a, b = load_expert(models["sd"]), load_expert(models["sd_linear"])
    assert a.schedule.sigma_max != pytest.approx(b.schedule.sigma_max)
    sigma = 1.0
    assert a.schedule.sigma_to_t(sigma) != pytest.approx(b.schedule.sigma_to_t(sigma))
    # In one loop both experts see the same noise levels, each through its own timesteps.
    from pangudraw.expert import Expert

    seen = []
    predict = Expert.predict

    def record(self, y, sigma, *args, **kwargs):
        seen.append((self.name, sigma, self.schedule.sigma_to_t(sigma)))
        return predict(self, y, sigma, *args, **kwargs)

    recipe = Recipe(experts=[spec("a", models["sd"]), spec("b", models["sd_linear"])], steps=5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Expert, "predict", record)
        coop_generate(recipe)
    by_expert = {name: [(s, t) for n, s, t in seen if n == name] for name, _, _ in seen}
    (sigmas_a, ts_a), (sigmas_b, ts_b) = (list(zip(*v)) for v in by_expert.values())
    assert sigmas_a == sigmas_b and len(sigmas_a) == 5
    assert all(t_a != pytest.approx(t_b) for t_a, t_b in zip(ts_a, ts_b))


def test_controlnet_expert_equals_diffusers_controlnet_pipeline(models):
    expert = load_expert(models["sd"])
    controlnet = ControlNetModel.from_pretrained(models["cn_sd"])
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pipe = StableDiffusionControlNetPipeline.from_pretrained(models["sd"], controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    theirs = pipe(
        PROMPT,
        image=image,
        num_inference_steps=6,
        guidance_scale=2.0,
        controlnet_conditioning_scale=0.8,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).images

    cond = expert.encode_prompt([PROMPT], None, 2.0)
    control = Control(controlnet, image, 0.8)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    scheduler = make_scheduler("euler", expert.scheduler_config)
    latents = sample([Participant(expert, cond, 2.0, controls=[control])], scheduler, noise, 6)
    ours = (expert.space.decode(latents) / 2 + 0.5).clamp(0, 1)
    assert (ours - theirs).abs().max() <= 1e-4

    plain = sample(
        [Participant(expert, cond, 2.0)], make_scheduler("euler", expert.scheduler_config), noise, 6
    )
    assert (plain - latents).abs().max() > 1e-3  # the control does something


def test_masks_fuse_region_by_region():
    left = torch.zeros(1, 1, 4, 4)
    left[..., :2] = 1.0
    right = 1 - left
    a, b = torch.full((1, 2, 4, 4), 1.0), torch.full((1, 2, 4, 4), 3.0)
    fused = fuse([a, b], [left, right])
    assert torch.equal(fused[..., :2], a[..., :2]) and torch.equal(fused[..., 2:], b[..., 2:])
    half = fuse([a, b], [torch.full((1, 1, 4, 4), 0.5)] * 2)
    assert torch.allclose(half, torch.full_like(a, 2.0))


def test_uncovered_mask_region_and_zero_weights_are_errors(models):
    expert = load_expert(models["sd"])
    cond = expert.encode_prompt([PROMPT])
    left = torch.zeros(1, 1, 8, 8)
    left[..., :4] = 1
    masked = Participant(expert, cond, mask=left)
    with pytest.raises(UserError, match="leave part of the canvas at zero"):
        check_coverage([masked], [1.0], [left])
    zero = Participant(expert, cond, weight=0.0)
    with pytest.raises(UserError, match="weights sum to zero"):
        check_coverage([zero], [1.0], [torch.zeros(1, 1, 8, 8)])


def test_masked_regional_experts_run(models, tmp_path):
    from PIL import Image

    Image.new("L", (16, 16), 255).crop((0, 0, 8, 16)).save(tmp_path / "half.png")
    left = Image.new("L", (16, 16), 0)
    left.paste(255, (0, 0, 8, 16))
    left.save(tmp_path / "left.png")
    right = Image.eval(left, lambda v: 255 - v)
    right.save(tmp_path / "right.png")
    recipe = Recipe(
        experts=[
            spec("l", models["sd"], mask=str(tmp_path / "left.png")),
            spec("r", models["sd_other"], mask=str(tmp_path / "right.png")),
        ],
        steps=5,
    )
    images = coop_generate(recipe).images
    alone = coop_generate(Recipe(experts=[spec("l", models["sd"])], steps=5)).images
    # The left half follows the left expert more closely than the right half does.
    left_diff = (images - alone)[..., :6].abs().mean()
    right_diff = (images - alone)[..., 10:].abs().mean()
    assert left_diff < right_diff


@pytest.mark.parametrize("policy", ["carry", "resample"])
def test_noise_policies_are_deterministic_and_differ(models, policy):
    def recipe(noise):
        return Recipe(
            experts=[spec("b", models["sd_b"]), spec("a", models["sd"])],
            canvas_expert="a",
            steps=5,
            seed=4,
            noise=noise,
        )

    first = coop_generate(recipe(policy)).images
    assert torch.equal(first, coop_generate(recipe(policy)).images)
    other = "resample" if policy == "carry" else "carry"
    assert (first - coop_generate(recipe(other)).images).abs().max() > 1e-3


def test_late_expert_enters_by_resampling_from_the_fused_estimate(models):
    a, b = load_expert(models["sd"]), load_expert(models["sd_b"])
    canvas = Site(a.space, (16, 16))
    seen = []
    participants = [
        Participant(a, a.encode_prompt([PROMPT])),
        Participant(b, b.encode_prompt([PROMPT]), window=(0.0, 2.0), size=(32, 32)),
    ]
    scheduler = make_scheduler("euler", a.scheduler_config)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sample(participants, scheduler, noise, 8, callback=seen.append, canvas=canvas)
    entered = [s.index for s in seen if 1 in s.active]
    assert entered and entered[0] > 0 and all(s.sigma < 2.0 for s in seen if 1 in s.active)


def test_gap_between_windows_is_named(models):
    recipe = Recipe(
        experts=[
            spec("hi", models["sd"], window=Window("t", 700, 1000)),
            spec("lo", models["sd"], window=Window("t", 0, 300)),
        ],
        steps=10,
    )
    with pytest.raises(UserError, match=r"no expert is active for sigma in \[.*\] \(\d+ of 10"):
        coop_generate(recipe)


def test_controlnet_for_another_base_is_refused(models):
    recipe = Recipe(experts=[spec("a", models["sd"])])
    from pangudraw.recipes import ControlSpec

    recipe.experts[0].controls = [ControlSpec(str(models["cn_sd_b"]), "unused.png")]
    with pytest.raises(UserError, match="was built for another base"):
        coop_generate(recipe)


def test_sigma_windows_are_used_as_given(models):
    """A split given on sigma is the split given on t at that sigma, to the bit."""
    sigma = load_expert(models["sd"]).schedule.t_to_sigma(500)

    def pair(high: Window, low: Window) -> torch.Tensor:
        experts = [spec("a", models["sd"], window=high), spec("b", models["sd_b"], window=low)]
        return coop_generate(Recipe(experts=experts, steps=6)).images

    on_t = pair(Window("t", 500, 1000), Window("t", 0, 500))
    on_sigma = pair(Window("sigma", sigma, math.inf), Window("sigma", 0.0, sigma))
    assert torch.equal(on_t, on_sigma)
    elsewhere = pair(Window("sigma", 2 * sigma, math.inf), Window("sigma", 0.0, 2 * sigma))
    assert not torch.equal(on_t, elsewhere)


def test_bridging_every_k_steps_runs_the_off_canvas_expert_less_often(models):
    a, b = load_expert(models["sd"]), load_expert(models["sd_b"])
    calls = []
    b.network.register_forward_hook(lambda *_: calls.append(1))
    participants = [
        Participant(a, a.encode_prompt([PROMPT])),
        Participant(b, b.encode_prompt([PROMPT]), size=(32, 32)),
    ]
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    results = {}
    for k in (1, 2, 4):
        calls.clear()
        scheduler = make_scheduler("euler", a.scheduler_config)
        results[k] = sample(
            participants, scheduler, noise, 8, canvas=Site(a.space, (16, 16)), bridge_every=k
        )
        assert len(calls) == 8 // k
    assert (results[1] - results[2]).abs().max() > 1e-4
    with pytest.raises(UserError, match="bridge_every must be at least 1"):
        sample(participants, make_scheduler("euler", a.scheduler_config), noise, 8, bridge_every=0)


def test_odd_sizes_on_the_canvas_and_off_it(models, tmp_path):
    """An 18x22 canvas (a 9x11 latent) with an expert off the canvas that works at the
    nearest size its pipeline accepts (a multiple of its VAE factor 4) and is bridged."""
    table = {
        "prompt": "a red apple",
        "steps": 3,
        "guidance": 2.0,
        "canvas": {"width": 22, "height": 18},
        "experts": [
            {"name": "canvas", "model": str(models["sd"])},
            {"name": "deep", "model": str(models["sd_deep"]), "window": {"sigma": [1.0, None]}},
        ],
    }
    recipe = parse_recipe(table, "r.toml", tmp_path)
    out = coop_generate(recipe).images
    assert out.shape[-2:] == (18, 22) and torch.equal(out, coop_generate(recipe).images)
    table["experts"][1]["size"] = [30, 36]  # not a multiple of 4: named, not rounded
    with pytest.raises(UserError, match="not a multiple of 4"):
        coop_generate(parse_recipe(table, "r.toml", tmp_path))


def test_a_control_image_of_another_size_and_a_step_window_equal_diffusers(models, tmp_path):
    """The control image is resized as diffusers' ControlNet pipelines resize it (PIL
    Lanczos at 8 bits), and control_guidance_start / _end mean what they mean there."""
    import numpy as np
    from PIL import Image

    from pangudraw.cli.main import main

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    picture.save(tmp_path / "control.png")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'prompt = "{PROMPT}"\nsteps = 6\nseed = 3\nguidance = 2.0\n[[experts]]\n'
        f'model = "{models["sd"]}"\ncontrols = [{{ model = "{models["cn_sd"]}", '
        'image = "control.png", scale = 0.8, control_guidance_start = 0.2, '
        "control_guidance_end = 0.7 }]\n"
    )
    main(["coop", str(recipe), "-o", str(tmp_path / "ours.png")])
    ours = torch.from_numpy(np.array(Image.open(tmp_path / "ours.png"))).permute(2, 0, 1)

    controlnet = ControlNetModel.from_pretrained(models["cn_sd"])
    pipe = StableDiffusionControlNetPipeline.from_pretrained(models["sd"], controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)

    def diffusers_image(**window):
        return pipe(
            PROMPT,
            image=picture,
            num_inference_steps=6,
            guidance_scale=2.0,
            controlnet_conditioning_scale=0.8,
            height=16,
            width=16,
            generator=torch.Generator().manual_seed(3),
            output_type="pt",
            **window,
        ).images[0]

    theirs = diffusers_image(control_guidance_start=0.2, control_guidance_end=0.7)
    assert ((theirs * 255).round() - ours.float()).abs().max() <= 1
    everywhere = diffusers_image()
    assert (everywhere - theirs).abs().max() > 2 / 255  # the window matters here
    # The control tensor itself is diffusers' to the bit (a random ControlNet this small
    # barely moves the pixels, so the images alone would not tell the resizes apart).
    from pangudraw.pipelines import control_image
    from pangudraw.recipes import ControlSpec

    given = control_image(
        ControlSpec(str(models["cn_sd"]), str(tmp_path / "control.png")), (16, 16)
    )
    expected = pipe.control_image_processor.preprocess(picture, height=16, width=16)
    assert torch.equal(given, expected)
