"""Starting from a picture (``editing.py``): image to image, inpainting with a standard and
with a 9-channel model, outpainting, against diffusers' own img2img and inpaint pipelines
on the tiny models, same seed meaning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from equality import PROMPT, TOL, mask, picture
from equality import run_cli as cli
from pangudraw.editing import EditSpec
from pangudraw.errors import UserError
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate


def diffusers_image(pipe, **kwargs) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(3)
    return pipe(PROMPT, generator=generator, output_type="pt", **kwargs).images


def ours(folder, edit, **kwargs) -> torch.Tensor:
    expert = load_expert(folder)
    return generate(expert, None, PROMPT, seed=3, edit=edit, **kwargs).images


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_sdxl_image_to_image_equals_its_pipeline(models, tmp_path, strength):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    image = picture(tmp_path / "in.png")
    edit = EditSpec(str(image), strength)
    mine = ours(models["sdxl"], edit, num_inference_steps=8, guidance_scale=2.0)
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(models["sdxl"])
    theirs = diffusers_image(
        pipe, image=Image.open(image), strength=strength, num_inference_steps=8, guidance_scale=2.0
    )
    assert (mine - theirs).abs().max() <= TOL


def test_flux_image_to_image_equals_its_pipeline(models, tmp_path):
    from diffusers import FluxImg2ImgPipeline

    image = picture(tmp_path / "in.png", size=(32, 32))
    edit = EditSpec(str(image), 0.65)  # int(N - N s) rounds otherwise than SD's rule
    mine = ours(models["flux_dev"], edit, num_inference_steps=6, guidance_scale=3.5)
    pipe = FluxImg2ImgPipeline.from_pretrained(models["flux_dev"])
    theirs = diffusers_image(
        pipe,
        image=Image.open(image),
        strength=0.65,
        num_inference_steps=6,
        guidance_scale=3.5,
        height=32,
        width=32,
    )
    assert (mine - theirs).abs().max() <= TOL


@pytest.mark.parametrize("strength, sampler", [(1.0, "euler"), (0.7, "euler"), (0.7, "ddim")])
def test_sdxl_inpainting_with_a_standard_model_equals_its_pipeline(
    models, tmp_path, strength, sampler
):
    from diffusers import StableDiffusionXLInpaintPipeline

    from pangudraw.coop import SAMPLERS

    image, where = picture(tmp_path / "in.png"), mask(tmp_path / "mask.png")
    edit = EditSpec(str(image), strength, str(where))
    kwargs = {"num_inference_steps": 8, "guidance_scale": 2.0, "sampler": sampler}
    mine = ours(models["sdxl"], edit, **kwargs)
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(models["sdxl"])
    pipe.scheduler = SAMPLERS[sampler].from_config(pipe.scheduler.config)
    theirs = diffusers_image(
        pipe,
        image=Image.open(image),
        mask_image=Image.open(where),
        strength=strength,
        num_inference_steps=8,
        guidance_scale=2.0,
        height=16,
        width=16,
    )
    assert (mine - theirs).abs().max() <= TOL


def test_flux_inpainting_equals_its_pipeline(models, tmp_path):
    from diffusers import FluxInpaintPipeline

    image = picture(tmp_path / "in.png", size=(32, 32))
    where = mask(tmp_path / "mask.png", size=(32, 32), box=(8, 0, 32, 32))
    edit = EditSpec(str(image), 0.8, str(where))
    mine = ours(models["flux_dev"], edit, num_inference_steps=6, guidance_scale=3.5)
    pipe = FluxInpaintPipeline.from_pretrained(models["flux_dev"])
    theirs = diffusers_image(
        pipe,
        image=Image.open(image),
        mask_image=Image.open(where),
        strength=0.8,
        num_inference_steps=6,
        guidance_scale=3.5,
        height=32,
        width=32,
    )
    assert (mine - theirs).abs().max() <= TOL


def _inpainted_both_ways(model, pipeline, image, where, strength, steps, g, size):
    """A dedicated inpainting model's picture by our loop and by its diffusers pipeline;
    checks on the way that it is recognised as one and refuses to draw without a picture."""
    expert = load_expert(model)
    assert expert.inpainting
    edit = EditSpec(str(image), strength, str(where))
    mine = generate(
        expert, None, PROMPT, seed=3, edit=edit, num_inference_steps=steps, guidance_scale=g
    ).images
    theirs = diffusers_image(
        pipeline.from_pretrained(model),
        image=Image.open(image),
        mask_image=Image.open(where),
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=g,
        height=size[0],
        width=size[1],
    )
    with pytest.raises(UserError, match="is an inpainting model"):
        generate(expert, None, PROMPT, seed=3, num_inference_steps=4)
    return mine, theirs


@pytest.fixture(scope="module")
def fill_model(tmp_path_factory):
    from fixtures.tiny_models import tiny_flux

    folder = tmp_path_factory.mktemp("fill") / "flux_fill"
    tiny_flux(folder, seed=7, fill=True)
    return folder


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_flux_fill_equals_its_pipeline(fill_model, tmp_path, strength):
    """FLUX.1 Fill takes the masked picture's latents and the mask folded into channels;
    at full strength it still samples the picture's posterior first, as its pipeline does."""
    from diffusers import FluxFillPipeline

    from pangudraw.families import model_defaults

    assert model_defaults(fill_model) == {"steps": 50, "guidance_scale": 30.0}
    image = picture(tmp_path / "in.png", size=(32, 32))
    where = mask(tmp_path / "mask.png", size=(32, 32), box=(0, 8, 24, 32))
    mine, theirs = _inpainted_both_ways(
        fill_model, FluxFillPipeline, image, where, strength, 6, 30.0, (32, 32)
    )
    assert (mine - theirs).abs().max() <= TOL


@pytest.fixture(scope="module")
def inpainting_model(tmp_path_factory):
    from fixtures.tiny_models import tiny_sd

    folder = tmp_path_factory.mktemp("inpaint") / "sd_inpaint"
    tiny_sd(folder, seed=6, inpainting=True)
    return folder


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_a_9_channel_inpainting_model_equals_its_pipeline(inpainting_model, tmp_path, strength):
    from diffusers import StableDiffusionInpaintPipeline

    image, where = picture(tmp_path / "in.png"), mask(tmp_path / "mask.png")
    mine, theirs = _inpainted_both_ways(
        inpainting_model, StableDiffusionInpaintPipeline, image, where, strength, 8, 2.0, (16, 16)
    )
    assert (mine - theirs).abs().max() <= TOL


def test_a_strength_that_runs_no_step_is_an_error_and_the_largest_starts_at_the_top(
    models, tmp_path
):
    image = picture(tmp_path / "in.png")
    expert = load_expert(models["sd"])
    with pytest.raises(UserError, match="runs none of the 4 steps"):
        generate(expert, None, PROMPT, edit=EditSpec(str(image), 0.2), num_inference_steps=4)
    one = generate(expert, None, PROMPT, edit=EditSpec(str(image), 0.25), num_inference_steps=4)
    assert one.images.shape == (1, 3, 16, 16)  # int(4 * 0.25) = 1 step ran


def test_inpainting_keeps_the_known_region_up_to_the_vae(models, tmp_path):
    """With a standard model the last step puts back the picture's clean latents outside
    the mask: there the result is the picture through the VAE (encode sample, decode)."""
    image, where = picture(tmp_path / "in.png"), mask(tmp_path / "mask.png")
    expert = load_expert(models["sd"])
    out = generate(
        expert, None, PROMPT, seed=1, edit=EditSpec(str(image), 1.0, str(where)),
        num_inference_steps=6,
    )  # fmt: skip
    from pangudraw.editing import prepare

    edit = prepare(EditSpec(str(image), 1.0, str(where)), (16, 16), expert.space.factor)
    with torch.no_grad():
        latents = expert.space.encode(edit.image, torch.Generator().manual_seed(1))
    keep = (1 - torch.nn.functional.interpolate(edit.mask, size=(8, 8)))[0, 0].bool()
    assert torch.allclose(out.latents[0][:, keep], latents[0][:, keep], atol=1e-6)
    repainted = ~keep
    assert (out.latents[0][:, repainted] - latents[0][:, repainted]).abs().max() > 0.1


def test_outpainting_places_the_picture_and_masks_the_rest(tmp_path):
    from pangudraw.editing import prepare

    small = picture(tmp_path / "in.png", size=(8, 8))
    edit = prepare(EditSpec(str(small), 1.0, place=(4, 2)), (16, 16), 2)
    assert edit.mask.shape == (1, 1, 16, 16)
    inside = edit.mask[0, 0, 2:10, 4:12]
    assert inside.max() == 0 and edit.mask.sum() == 16 * 16 - 8 * 8
    pixels = np.asarray(Image.open(small).convert("RGB"), dtype=np.float32) / 255 * 2 - 1
    placed = edit.image[0, :, 2:10, 4:12].permute(1, 2, 0).numpy()
    assert np.allclose(placed, pixels, atol=1e-6)
    centred = prepare(EditSpec(str(small), 1.0), (16, 24), 2)
    assert centred.mask[0, 0, 4:12, 8:16].max() == 0  # (24 - 8) / 2, (16 - 8) / 2
    blurred = prepare(EditSpec(str(small), 1.0, mask_blur=2), (16, 16), 2)
    soft = blurred.mask[0, 0]
    assert 0 < soft[4, 4] < 1 and blurred.binary.unique().tolist() == [0.0, 1.0]
    with pytest.raises(UserError, match="does not fit"):
        prepare(EditSpec(str(small), 1.0, place=(12, 0)), (16, 16), 2)


# ------------------------------------------------------------------- the CLI and recipes


EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mask", "MASK"], "--mask needs --init-image"),
        (["--strength", "0.5"], "--strength needs --init-image"),
        (["--init-image", "MISSING"], "init image .* does not exist"),
        (["--init-image", "TEXT"], "init image .* is not an image file"),
        (["--init-image", "HEART", "--strength", "0"], r"strength 0 is outside \(0, 1\]"),
        (["--init-image", "HEART", "--strength", "1.01"], r"strength 1.01 is outside"),
        (["--init-image", "HEART", "--mask", "TEXT"], "mask .* is not an image file"),
        (["--init-image", "HEART", "--place", "x"], "expected X,Y in pixels"),
        (["--init-image", "HEART", "--steps", "4", "--strength", "0.2"], "runs none of the"),
        (["--init-image", "SMALL", "--size", "64", "--place", "60,0"], "does not fit"),
    ],
)
def test_bad_input_for_an_edit_is_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    import re

    (tmp_path / "text.png").write_text("not a picture")
    picture(tmp_path / "small.png", size=(16, 16))
    mask(tmp_path / "mask.png", size=(64, 64))
    names = {"MASK": tmp_path / "mask.png", "MISSING": tmp_path / "missing.png"}
    names |= {"TEXT": tmp_path / "text.png", "HEART": EXAMPLES / "heart.png"}
    names |= {"SMALL": tmp_path / "small.png"}
    argv = ["generate", "x", *[names.get(a, a) for a in args], "-o", tmp_path / "out.png"]
    code, err = cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), err
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "inputs").exists()


def test_generate_from_a_picture_keeps_its_inputs_and_records_them(tmp_path, capsys):
    from pangudraw.imageio import read_record

    where = mask(tmp_path / "mask.png", size=(64, 64), box=(16, 16, 48, 48))
    out = tmp_path / "results" / "a.png"
    argv = ["generate", "grinning face", "--init-image", EXAMPLES / "heart.png", "--mask", where]
    code, err = cli([*argv, "--seed", "1", "--steps", "6", "-o", out], capsys)
    assert code == 0, err
    edit = read_record(out)["edit"]
    assert edit["strength"] == 1.0 and edit["init_image"].startswith("inputs/")
    kept = out.parent / edit["init_image"]
    assert kept.read_bytes() == (EXAMPLES / "heart.png").read_bytes()
    assert (out.parent / edit["mask"]).read_bytes() == where.read_bytes()
    plain = tmp_path / "plain.png"
    cli(["generate", "grinning face", "--seed", "1", "--steps", "6", "-o", plain], capsys)
    assert Image.open(out).tobytes() != Image.open(plain).tobytes()


def test_a_pair_from_a_picture_bridges_it_to_the_structure_model_and_a_recipe_reproduces(
    tmp_path, capsys
):
    """The bundled pair works in two latent spaces (pixels and A): the picture is encoded
    on the canvas (A) and reaches the structure model through the bridge; at a low strength
    only the texture model runs."""
    from pangudraw.loading.models import ModelCache

    models = ModelCache()
    structure, texture = models.get("structure"), models.get("texture")
    heart = str(EXAMPLES / "heart.png")
    kwargs = {"num_inference_steps": 10, "seed": 2, "bridge": "exact"}
    strong = generate(structure, texture, "red heart", edit=EditSpec(heart, 0.9), **kwargs)
    weak = generate(structure, texture, "red heart", edit=EditSpec(heart, 0.3), **kwargs)
    again = generate(structure, texture, "red heart", edit=EditSpec(heart, 0.9), **kwargs)
    assert torch.equal(strong.images, again.images)
    assert strong.bridges and not weak.bridges  # t >= 500 is reached only at 0.9
    recipe = tmp_path / "r.toml"
    (tmp_path / "heart.png").write_bytes((EXAMPLES / "heart.png").read_bytes())
    recipe.write_text(
        'prompt = "red heart"\nsteps = 6\n[canvas]\ninit_image = "heart.png"\nstrength = 0.5\n'
        '[[experts]]\nmodel = "zoo:full"\n'
    )
    out, copy = tmp_path / "out" / "a.png", tmp_path / "out" / "b.png"
    assert cli(["coop", recipe, "-o", out], capsys)[0] == 0
    assert cli(["coop", "--from-png", out, "-o", copy], capsys)[0] == 0
    assert out.read_bytes() == copy.read_bytes()
