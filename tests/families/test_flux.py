"""Flux.1 experts: our loop against diffusers' FluxPipeline, and Flux beside SD in Coop."""

import json

import pytest
import torch
from diffusers import FluxPipeline

from pangudraw.errors import UserError
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate

PROMPT = "a red apple"
TOL = 1e-4


@pytest.mark.parametrize("kind", ["dev", "schnell"])
@pytest.mark.parametrize("size", [(32, 32), (32, 48), (36, 44)])
def test_one_flux_expert_equals_flux_pipeline(models, kind, size):
    """Same components, seed and steps: the dev model's guidance embedding, schnell's
    none, dynamic shifting of Flux's own sigmas at each resolution."""
    folder = models[f"flux_{kind}"]
    expert = load_expert(folder)
    assert expert.family.name == "flux" and expert.prediction_type == "flow"
    height, width = size
    ours = generate(
        expert,
        None,
        PROMPT,
        seed=3,
        num_inference_steps=6,
        guidance_scale=3.5,
        height=height,
        width=width,
    ).images
    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        PROMPT,
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=6,
        guidance_scale=3.5,
        height=height,
        width=width,
        output_type="pt",
    ).images
    assert ours.std() > 0.01
    assert (ours - theirs).abs().max() <= TOL


def test_flux_guidance_value_reaches_the_dev_model_only(models):
    dev, schnell = load_expert(models["flux_dev"]), load_expert(models["flux_schnell"])

    def image(expert, guidance):
        out = generate(
            expert,
            None,
            PROMPT,
            seed=1,
            num_inference_steps=3,
            guidance_scale=guidance,
            height=32,
            width=32,
        )
        return out.images

    assert not torch.equal(image(dev, 2.0), image(dev, 5.0))
    assert torch.equal(image(schnell, 2.0), image(schnell, 5.0))


def test_flux_size_must_fit_its_patches(models):
    expert = load_expert(models["flux_dev"])
    with pytest.raises(UserError, match="multiple of 4"):
        generate(expert, None, PROMPT, num_inference_steps=2, height=30, width=32)


def test_flux_sampler_other_than_euler_is_refused(models):
    expert = load_expert(models["flux_dev"])
    with pytest.raises(UserError, match="rectified-flow canvas; use euler"):
        generate(expert, None, PROMPT, num_inference_steps=2, sampler="dpmpp_2m")


CROSS = """
prompt = "a red apple"
seed = 5
steps = 4
guidance = 2.0

[canvas]
width = 32
height = 32
expert = "{canvas}"

[[experts]]
name = "layout"
model = "{layout}"
window = {{ sigma = [1.0, inf] }}
size = [32, 32]

[[experts]]
name = "detail"
model = "{detail}"
window = {{ sigma = [0, 1.0] }}
"""


@pytest.mark.parametrize("layout, detail", [("sdxl", "flux_dev"), ("flux_schnell", "sdxl")])
def test_sdxl_and_flux_experts_share_one_loop_and_reproduce_from_png(
    models, tmp_path, layout, detail
):
    """Structure from one family, texture from the other, on the texture expert's canvas:
    4-channel and 16-channel VAEs bridged, epsilon and flow on one sigma axis."""
    from PIL import Image

    from pangudraw.cli.main import main

    recipe = tmp_path / "cross.toml"
    recipe.write_text(CROSS.format(canvas="detail", layout=models[layout], detail=models[detail]))
    first, second, again = (tmp_path / f"{n}.png" for n in ("first", "second", "again"))
    main(["coop", str(recipe), "-o", str(first)])
    main(["coop", str(recipe), "-o", str(second)])
    main(["coop", "--from-png", str(first), "--allow-outside-paths", "-o", str(again)])
    with Image.open(first) as a, Image.open(second) as b, Image.open(again) as c:
        assert a.size == (32, 32)
        assert a.tobytes() == b.tobytes() == c.tobytes()
        pixels = torch.tensor(list(a.getdata()), dtype=torch.float32)
    assert pixels.std() > 1.0  # not a flat image


def cli(argv, capsys):
    from pangudraw.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_generate_with_flux_from_the_cli_and_its_bad_input(models, tmp_path, capsys):
    out = tmp_path / "flux.png"
    base = ["generate", "--structure", str(models["flux_dev"]), "--steps", "2", "-o", str(out)]
    from pangudraw.cli.main import main

    main([base[0], "a red apple", *base[1:], "--width", "32", "--height", "32", "-g", "3.5"])
    assert out.is_file()
    out.unlink()
    capsys.readouterr()
    # T5 takes 512 tokens here (one per character in the tiny tokenizer): refused, not cut.
    code, err = cli([base[0], "x" * 600, *base[1:], "--width", "32", "--height", "32"], capsys)
    assert code == 2 and "tokens; this model takes at most 512" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code, err = cli([base[0], "apple", *base[1:], "--width", "30", "--height", "32"], capsys)
    assert code == 2 and "multiple of 4" in err and not out.exists()


def test_cross_family_example_parses():
    from pathlib import Path

    from pangudraw.recipes import load_recipe

    recipe = load_recipe(Path(__file__).parents[2] / "examples" / "cross_family.toml")
    layout, texture = recipe.experts
    assert "xl" in layout.model and "FLUX" in texture.model and recipe.canvas_expert == "texture"
    assert layout.window.hi == float("inf") and texture.window.hi == layout.window.lo


@pytest.mark.parametrize("negative", ["a green pear", None])
def test_flux_true_cfg_equals_flux_pipeline(models, negative):
    """FluxPipeline's true_cfg_scale: the negative prompt's prediction pushed away from,
    the dev model's guidance embedding unchanged. Without a negative prompt diffusers
    skips true CFG; ours guides against the empty prompt, as diffusers does when given ""."""
    folder = models["flux_dev"]
    expert = load_expert(folder)
    settings = {"num_inference_steps": 4, "guidance_scale": 3.5, "height": 32, "width": 32}
    ours = generate(
        expert, None, PROMPT, negative_prompt=negative, seed=2, true_cfg=4.0, **settings
    ).images
    plain = generate(expert, None, PROMPT, negative_prompt=negative, seed=2, **settings).images
    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        PROMPT,
        negative_prompt=negative if negative is not None else "",
        true_cfg_scale=4.0,
        generator=torch.Generator().manual_seed(2),
        output_type="pt",
        **settings,
    ).images
    assert (ours - theirs).abs().max() <= TOL
    assert (ours - plain).abs().max() > 0.01  # it changes the image


def test_true_cfg_is_refused_where_it_means_nothing(models, tmp_path):
    from pangudraw.cli.main import main

    sd = load_expert(models["sd"])
    with pytest.raises(UserError, match="true CFG is for Flux"):
        generate(sd, None, PROMPT, num_inference_steps=2, true_cfg=3.0)
    with pytest.raises(UserError, match="true CFG is for Flux"):
        sd.encode_prompt([PROMPT], None, 7.0, (32, 32), (), 3.0)
    with pytest.raises(UserError, match="below 1"):
        load_expert(models["flux_dev"]).encode_prompt([PROMPT], None, 3.5, (32, 32), (), 0.5)
    with pytest.raises(SystemExit) as info:
        main(["generate", "a", "--true-cfg", "0.5", "-o", str(tmp_path / "x.png")])
    assert info.value.code == 2 and not (tmp_path / "x.png").exists()


def test_a_recipe_expert_takes_true_cfg_and_its_png_keeps_it(models, tmp_path):
    """One Flux expert with ``true_cfg`` in a recipe draws what generate(true_cfg=) draws,
    and the PNG's recipe reproduces it."""
    from PIL import Image

    from pangudraw.cli.main import main
    from pangudraw.recipes import load_recipe

    recipe = tmp_path / "flux.toml"
    recipe.write_text(
        f"""prompt = "{PROMPT}"
negative_prompt = "a green pear"
seed = 2
steps = 3
guidance = 3.5

[canvas]
width = 32
height = 32

[[experts]]
name = "flux"
model = "{models["flux_dev"].as_posix()}"
true_cfg = 4.0
"""
    )
    from pangudraw.pipelines import coop_generate

    ours = coop_generate(load_recipe(recipe)).images
    expert = load_expert(models["flux_dev"])
    direct = generate(
        expert, None, PROMPT, negative_prompt="a green pear", seed=2, num_inference_steps=3,
        guidance_scale=3.5, height=32, width=32, true_cfg=4.0,
    ).images  # fmt: skip
    assert (ours - direct).abs().max() <= 1e-5
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    main(["coop", str(recipe), "-o", str(first)])
    main(["coop", "--from-png", str(first), "--allow-outside-paths", "-o", str(again)])
    with Image.open(first) as a, Image.open(again) as b:
        assert a.tobytes() == b.tobytes() and "true CFG 4" in a.text["parameters"]
    recipe.write_text(recipe.read_text().replace("true_cfg = 4.0", "true_cfg = 0.5"))
    with pytest.raises(UserError, match="true_cfg"):
        load_recipe(recipe)


def test_a_flux_model_gets_its_own_steps_and_guidance_unless_given(models, tmp_path):
    """Without -g/--steps a Flux.1 model samples as FluxPipeline does (dev: 28 steps,
    distilled guidance 3.5; schnell: 4 steps), not with the SD defaults (7, 15 steps); the
    PNG records what was used. A recipe's Flux expert without a guidance value gets 3.5."""
    from PIL import Image

    from pangudraw.cli.main import main
    from pangudraw.families import flux, model_defaults
    from pangudraw.recipes import parse_recipe

    assert model_defaults(models["flux_dev"]) == flux.DEFAULTS["dev"]
    assert model_defaults(models["flux_schnell"]) == flux.DEFAULTS["schnell"]
    assert model_defaults(models["sdxl"]) == {} and model_defaults(tmp_path / "none") == {}

    def record(*extra):
        out = tmp_path / "flux.png"
        main(["generate", "a red apple", "--size", "32", "-o", str(out), *extra])
        made = json.loads(Image.open(out).text["pangu-draw"])
        out.unlink()
        return made["steps"], made["guidance_scale"]

    dev, schnell = str(models["flux_dev"]), str(models["flux_schnell"])
    assert record("--structure", dev) == (28, 3.5)
    assert record("--structure", schnell) == (4, 3.5)
    assert record("--structure", dev, "-g", "2", "--steps", "3") == (3, 2.0)

    table = {"prompt": "a cat", "experts": [{"model": dev}, {"model": str(models["sdxl"])}]}
    flux_expert, sdxl_expert = parse_recipe(table, "r.toml", tmp_path).experts
    assert (flux_expert.guidance, sdxl_expert.guidance) == (3.5, 7.0)
    table["guidance"] = 5.0
    assert {e.guidance for e in parse_recipe(table, "r.toml", tmp_path).experts} == {5.0}


def test_flux_is_recognised_from_folders_and_file_headers(models, tmp_path):
    from fixtures.single_file import write
    from pangudraw.families import BY_NAME, family_of_file, family_of_folder
    from pangudraw.loading.schedulers import PUBLISHED

    for folder in (models["flux_dev"], models["flux_schnell"], PUBLISHED / "flux1-dev"):
        assert family_of_folder(folder) is BY_NAME["flux"], folder
    write(tmp_path, "flux-schnell")
    assert family_of_file(tmp_path / "flux-schnell.safetensors") is BY_NAME["flux"]
    assert family_of_file(tmp_path / "missing.safetensors") is None
