"""HunyuanImage 2.1: our loop against diffusers' HunyuanImagePipeline on a tiny model, with
its guider (classifier-free guidance, then adaptive projected guidance with momentum), its
OCR guider for quoted text, and ``-g`` as the guider's classifier-free scale."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import HunyuanImagePipeline
from PIL import Image

from equality import run_cli as cli
from pangudraw.families import family_of_folder, model_defaults
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate

PROMPT = "a red apple"
QUOTE = 'a sign that says "hi"'
TOL = 1e-4
OCR = {"guidance_scale": 2.0, "adaptive_projected_guidance_scale": 4.0}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from fixtures.tiny_models import tiny_hunyuan_image

    path = tmp_path_factory.mktemp("hunyuan") / "hunyuan_image"
    tiny_hunyuan_image(path)
    return path


def theirs(folder, g, prompt=PROMPT, output_type="latent", **kwargs):
    pipe = HunyuanImagePipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if pipe.guider is not None:
        pipe.guider = pipe.guider.new(guidance_scale=g)
    return pipe(
        prompt,
        generator=torch.Generator().manual_seed(3),
        output_type=output_type,
        **kwargs,
    ).images


@pytest.mark.parametrize(
    "g, prompt, size", [(3.5, QUOTE, (32, 32)), (5.0, PROMPT, (32, 48)), (1.0, PROMPT, (48, 32))]
)
def test_one_hunyuan_image_expert_equals_its_pipeline(folder, g, prompt, size):
    """``-g g`` is the guider's CFG scale (its APG after the start step as the folder has
    it); 1 turns guidance off. Five steps reach the tiny guider's APG phase (after step 2)."""
    expert = load_expert(folder)
    assert expert.family.name == "hunyuan-image" and expert.space.factor == 4
    kwargs = {"height": size[0], "width": size[1], "num_inference_steps": 5}
    ours = generate(expert, None, prompt, seed=3, guidance_scale=g, **kwargs)
    assert (ours.latents - theirs(folder, g, prompt, **kwargs)).abs().max() <= TOL
    images = theirs(folder, g, prompt, output_type="pt", **kwargs)
    assert (ours.images - images).abs().max() <= TOL and ours.images.std() > 0.01


def test_the_guider_is_not_plain_guidance(folder):
    """APG and its momentum change the picture: plain CFG at the same scale differs."""
    expert = load_expert(folder)
    kwargs = {"height": 32, "width": 32, "num_inference_steps": 5, "seed": 3}
    guided = generate(expert, None, PROMPT, guidance_scale=3.5, **kwargs).latents
    expert.text.guider = None  # classic guidance
    plain = generate(expert, None, PROMPT, guidance_scale=3.5, **kwargs).latents
    assert (guided - plain).abs().max() > 10 * TOL


def test_quoted_text_is_steered_by_the_ocr_guider(folder, tmp_path):
    """A prompt that quotes text takes the folder's OCR guider, as the pipeline does."""
    from fixtures.tiny_models import HUNYUAN_GUIDER, tiny_hunyuan_image

    ocr = tmp_path / "ocr"
    tiny_hunyuan_image(ocr, ocr_guider={**HUNYUAN_GUIDER, **OCR})
    kwargs = {"height": 32, "width": 32, "num_inference_steps": 5}
    ours = generate(load_expert(ocr), None, QUOTE, seed=3, guidance_scale=2.0, **kwargs).latents
    pipe = HunyuanImagePipeline.from_pretrained(ocr)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        QUOTE, generator=torch.Generator().manual_seed(3), output_type="latent", **kwargs
    ).images
    assert (ours - reference).abs().max() <= TOL
    plain = generate(load_expert(folder), None, QUOTE, seed=3, guidance_scale=2.0, **kwargs)
    assert (ours - plain.latents).abs().max() > 10 * TOL  # the other guider


@pytest.mark.parametrize("g", [3.25, 5.0])
def test_the_distilled_model_equals_its_pipeline(tmp_path, g):
    """HunyuanImage-2.1-Distilled: ``-g`` is the distilled value it takes, and each step's
    end timestep goes in beside its start (MeanFlow), 0 at the last step."""
    from fixtures.tiny_models import tiny_hunyuan_image

    distilled = tmp_path / "distilled"
    tiny_hunyuan_image(distilled, seed=2, distilled=True)
    assert model_defaults(distilled) == {"steps": 50, "guidance_scale": 3.25}
    expert = load_expert(distilled)
    kwargs = {"height": 32, "width": 32, "num_inference_steps": 4}
    ours = generate(expert, None, PROMPT, seed=3, guidance_scale=g, **kwargs)
    pipe = HunyuanImagePipeline.from_pretrained(distilled)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        PROMPT, distilled_guidance_scale=g, generator=torch.Generator().manual_seed(3),
        output_type="latent", **kwargs,
    ).images  # fmt: skip
    assert (ours.latents - theirs).abs().max() <= TOL and ours.images.std() > 0.01
    expert.next_sigma = None
    # the step's end matters: without it (a plain flow model's call) the picture differs
    original = type(expert.family).denoise

    def no_end(self, expert, z, t, sigma, cond, scale, controls):
        expert.next_sigma = None
        return original(self, expert, z, t, sigma, cond, scale, controls)

    type(expert.family).denoise = no_end
    try:
        other = generate(expert, None, PROMPT, seed=3, guidance_scale=g, **kwargs)
    finally:
        type(expert.family).denoise = original
    assert (other.latents - ours.latents).abs().max() > 10 * TOL


def test_recognition_and_the_pipeline_defaults(folder):
    assert family_of_folder(folder).name == "hunyuan-image"
    assert model_defaults(folder) == {"steps": 50, "guidance_scale": 3.5}
    assert load_expert(folder).sample_size == (256, 256)  # 64 cells x the VAE's 4


def test_the_cli_draws_what_the_library_draws(folder, tmp_path, capsys):
    from pangudraw.imageio import read_record

    out = tmp_path / "h.png"
    args = ["generate", QUOTE, "--structure", folder, "--steps", "3", "--size", "32"]
    code, err = cli([*args, "--seed", "3", "-o", out], capsys)
    assert code == 0, err
    record = read_record(out)
    assert record["guidance_scale"] == 3.5 and record["steps"] == 3
    again = generate(
        load_expert(folder),
        None,
        QUOTE,
        seed=3,
        num_inference_steps=3,
        height=32,
        width=32,
        guidance_scale=3.5,
    ).to_pil()[0]
    with Image.open(out) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(again))


def _broken(folder, tmp_path, edit):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    edit(bad)
    return bad


def _guider(value):
    def edit(bad):
        path = bad / "guider" / "guider_config.json"
        config = json.loads(path.read_text())
        config.update(value)
        path.write_text(json.dumps(config))

    return edit


def _index(component, spec):
    def edit(bad):
        index = json.loads((bad / "model_index.json").read_text())
        index[component] = spec
        (bad / "model_index.json").write_text(json.dumps(index))

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_guider({"adaptive_projected_guidance_scale": "ten"}), "must be a finite number"),
        (_guider({"stop": 0.5}), "starts or stops part-way"),
        (_index("text_encoder_2", ["transformers", "CLIPTextModel"]), "text_encoder_2"),
        (_index("guider", ["diffusers", "ClassifierFreeGuidance"]), "guider"),
    ],
)
def test_a_bad_folder_is_refused_in_one_line(folder, tmp_path, capsys, edit, message):
    bad = _broken(folder, tmp_path, edit)
    code, err = cli(["generate", PROMPT, "--structure", bad, "-o", tmp_path / "x.png"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.png").exists()


def test_a_lora_and_a_long_quote_are_refused_in_one_line(folder, tmp_path, capsys):
    from safetensors.torch import save_file

    lora = tmp_path / "lora.safetensors"
    save_file({"transformer.x.lora_A.weight": torch.ones(4, 8)}, lora)
    out = tmp_path / "x.png"
    code, err = cli(["generate", PROMPT, "--structure", folder, "--lora", lora, "-o", out], capsys)
    assert code == 2 and "no LoRA loader for HunyuanImage" in err and err.count("\n") == 1
    long = f'a sign that says "{"x" * 200}"'
    code, err = cli(["generate", long, "--structure", folder, "-o", out], capsys)
    assert code == 2 and "quote less" in err and err.count("\n") == 1
    assert not out.exists()


# ---------------------------------------------------------------------------- the refiner

EXAMPLE = Path(__file__).parents[2] / "examples" / "hunyuan_refiner.toml"


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    from fixtures.tiny_models import tiny_hunyuan_refiner

    path = tmp_path_factory.mktemp("hunyuan") / "refiner"
    tiny_hunyuan_refiner(path)
    return path


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    from equality import picture

    return picture(tmp_path_factory.mktemp("picture") / "in.png", size=(48, 32))


@pytest.mark.parametrize("g", [3.25, 6.0])
def test_the_refiner_on_a_picture_equals_its_pipeline(refiner, picture, g):
    """The picture's latents (its space: one frame, doubled into channels) noised to 0.25
    beside its own, drawn from noise in 4 steps; -g is its distilled guidance value."""
    from diffusers import HunyuanImageRefinerPipeline

    from pangudraw.editing import EditSpec

    expert = load_expert(refiner)
    assert expert.family.name == "hunyuan-image-refiner" and expert.space.doubled
    edit = EditSpec(str(picture), 1.0)
    ours = generate(
        expert, None, PROMPT, seed=3, guidance_scale=g, num_inference_steps=4, edit=edit
    )
    pipe = HunyuanImageRefinerPipeline.from_pretrained(refiner)
    pipe.set_progress_bar_config(disable=True)
    with Image.open(picture) as image:
        kwargs = {"image": image.convert("RGB"), "height": 32, "width": 48}
        for output, mine in (("latent", ours.latents[:, :, None]), ("pt", ours.images)):
            theirs = pipe(
                PROMPT,
                num_inference_steps=4,
                distilled_guidance_scale=g,
                generator=torch.Generator().manual_seed(3),
                output_type=output,
                **kwargs,
            ).images
            assert (mine - theirs).abs().max() <= TOL
    assert ours.images.std() > 0.01


def test_the_refiner_is_recognised_with_its_pipeline_defaults(refiner):
    assert family_of_folder(refiner).name == "hunyuan-image-refiner"
    assert model_defaults(refiner) == {"steps": 4, "guidance_scale": 3.25}
    expert = load_expert(refiner)
    assert expert.space.channels == 8 and expert.sample_size == (256, 256)


def test_the_refiner_needs_a_picture_and_takes_no_mask(refiner, picture, tmp_path, capsys):
    out = tmp_path / "x.png"
    code, err = cli(["generate", PROMPT, "--structure", refiner, "-o", out], capsys)
    assert code == 2 and "refines a picture" in err and err.count("\n") == 1, err
    args = ["generate", PROMPT, "--structure", refiner, "--init-image", picture]
    code, err = cli([*args, "--mask", picture, "-o", out], capsys)
    assert code == 2 and "takes no mask" in err and err.count("\n") == 1, err
    assert not out.exists()


def test_the_base_and_its_refiner_in_one_loop(folder, refiner, tmp_path):
    """examples/hunyuan_refiner.toml on tiny models: the base draws in its space, the
    refiner takes over the canvas in its own, beside the base's picture so far noised to
    0.25 with the loop's noise."""
    from pangudraw.pipelines import coop_generate
    from pangudraw.recipes import parse_recipe
    from pangudraw.tomlconf import read_toml

    table = read_toml(EXAMPLE, "recipe")
    models = {"draw": folder, "refine": refiner}
    for expert in table["experts"]:
        expert["model"] = str(models[expert["name"]])
    table["experts"][0]["size"] = [32, 32]
    table["canvas"] |= {"width": 32, "height": 32}
    table["steps"] = 8
    recipe = parse_recipe(table, str(EXAMPLE), tmp_path)
    steps, seen = [], {}
    out = coop_generate(recipe, callback=steps.append)
    assert [s.active for s in steps] == [[0]] * 7 + [[1]]  # the refiner has the last step
    handover = steps[6].x0  # the canvas's estimate where the refiner takes over

    # what the refiner sees beside its latents: that estimate noised to 0.25
    from pangudraw.families import hunyuan_image

    original = hunyuan_image.HunyuanImageRefiner.denoise

    def spy(self, expert, z, t, sigma, cond, scale, controls):
        seen.setdefault("picture", cond.extra)
        return original(self, expert, z, t, sigma, cond, scale, controls)

    hunyuan_image.HunyuanImageRefiner.denoise = spy
    try:
        again = coop_generate(parse_recipe(table, str(EXAMPLE), tmp_path))
    finally:
        hunyuan_image.HunyuanImageRefiner.denoise = original
    assert torch.equal(again.images, out.images)  # reproducible
    noise = (seen["picture"] - 0.75 * handover) / 0.25
    assert abs(float(noise.std()) - 1) < 0.3 and torch.isfinite(out.images).all()
    assert out.images.std() > 0.01


def test_a_split_that_leaves_the_refiner_no_step_is_refused(folder, refiner, tmp_path, capsys):
    args = ["generate", PROMPT, "--structure", folder, "--texture", refiner, "--split", "100"]
    code, err = cli([*args, "--steps", "4", "--size", "32", "-o", tmp_path / "x.png"], capsys)
    assert code == 2 and "gets none of the 4 steps" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("which", ["base", "refiner"])
def test_bfloat16_runs_close_to_float32(folder, refiner, picture, which):
    from pangudraw.editing import EditSpec
    from pangudraw.loading.models import ModelCache

    model = folder if which == "base" else refiner
    kwargs = {"seed": 3, "num_inference_steps": 4, "height": 32, "width": 48}
    kwargs |= {"guidance_scale": 3.5} if which == "base" else {"edit": EditSpec(str(picture), 1.0)}
    half = generate(ModelCache(dtype="bfloat16").get(model), None, PROMPT, **kwargs)
    full = generate(load_expert(model), None, PROMPT, **kwargs)
    assert torch.isfinite(half.images).all()
    assert (half.images - full.images).abs().max() < 0.1


def test_a_2048_px_request_is_estimated_at_the_decoder_s_full_size_width():
    """A VAE of HunyuanImage's kind (64 channels at 1/32; here 1024 wide at the bottom and
    256 at full size after its last upsampling): the memory estimate counts the full-size
    maps (counting the widest level asked 103 GB to decode one 2048 px image, and refused
    it on most machines)."""
    from diffusers import AutoencoderKLHunyuanImage

    from pangudraw.latents import LatentSpace
    from pangudraw.limits import network_estimate

    with torch.device("meta"):
        vae = AutoencoderKLHunyuanImage(
            in_channels=3, out_channels=3, latent_channels=64,
            block_out_channels=(128, 256, 512, 512, 1024, 1024), layers_per_block=2,
            spatial_compression_ratio=32, sample_size=384, scaling_factor=1.0,
        )  # fmt: skip
    space = LatentSpace(vae)
    assert space.factor == 32 and space.channels == 64 and space.decoder_width == 256
    estimate = network_estimate(1, 64 * 64, 28 * 128, True, 2048 * 2048, space.decoder_width)
    assert 20e9 < estimate < 40e9
