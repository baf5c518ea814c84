"""Wan 2.1 and 2.2: a Wan2.2 folder is a time-decoupled pair on its own (high-noise and
low-noise experts, switched at the folder's boundary, each with its own guidance), equal to
diffusers' WanPipeline on tiny models; either expert alone in a recipe."""

import json
import shutil

import pytest
import torch
from diffusers import WanPipeline

from equality import run_cli as cli
from pangudraw.families import family_of_folder, model_defaults
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate

PROMPT = "a red apple"
TOL = 1e-4
SIZE = {"height": 32, "width": 32}


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    from fixtures.tiny_models import tiny_wan

    root = tmp_path_factory.mktemp("wan")
    tiny_wan(root / "wan22", seed=0)
    tiny_wan(root / "wan21", seed=1, two_experts=False)
    return root


def theirs(folder, steps, guidance, guidance_2=None, output_type="pt") -> torch.Tensor:
    pipe = WanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        PROMPT,
        num_frames=1,
        num_inference_steps=steps,
        guidance_scale=guidance,
        guidance_scale_2=guidance_2,
        generator=torch.Generator().manual_seed(3),
        output_type=output_type,
        **SIZE,
    ).frames
    return out[:, 0] if output_type == "pt" else out[:, :, 0]


def test_a_wan22_folder_is_a_pair_equal_to_wan_pipeline(wan):
    """Both experts, the folder's boundary (t = 875), two guidance scales, its UniPC: the
    latents and the image as WanPipeline's."""
    folder = wan / "wan22"
    expert = load_expert(folder)
    assert expert.family.name == "wan" and expert.boundary == 875.0
    assert expert.low_noise is not None and expert.low_noise.network is not expert.network
    kwargs = {"seed": 3, "num_inference_steps": 6, "guidance_scale": 3.0, **SIZE}
    ours = generate(expert, None, PROMPT, guidance_scale_2=2.0, **kwargs)
    assert (ours.latents - theirs(folder, 6, 3.0, 2.0, "latent")).abs().max() <= TOL
    assert (ours.images - theirs(folder, 6, 3.0, 2.0)).abs().max() <= TOL
    # the second guidance scale reaches the low-noise steps (a change the test would see)
    other = generate(expert, None, PROMPT, guidance_scale_2=4.0, **kwargs).latents
    assert (other - ours.latents).abs().max() > 100 * TOL


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_a_wan21_folder_of_one_transformer_equals_wan_pipeline(wan, guidance):
    folder = wan / "wan21"
    expert = load_expert(folder)
    assert expert.low_noise is None and expert.boundary is None
    ours = generate(
        expert, None, PROMPT, seed=3, num_inference_steps=5, guidance_scale=guidance, **SIZE
    )
    assert (ours.latents - theirs(folder, 5, guidance, output_type="latent")).abs().max() <= TOL
    assert (ours.images - theirs(folder, 5, guidance)).abs().max() <= TOL


def test_the_boundary_decides_which_expert_runs_and_a_split_overrides_it(wan):
    expert = load_expert(wan / "wan22")
    steps = []
    kwargs = {"seed": 1, "num_inference_steps": 8, "callback": steps.append, **SIZE}
    generate(expert, None, PROMPT, **kwargs)
    assert [s.active for s in steps] == [[0] if s.timestep >= 875 else [1] for s in steps]
    assert {tuple(s.active) for s in steps} == {(0,), (1,)}
    steps.clear()
    generate(expert, None, PROMPT, t_split=500, **kwargs)
    assert [s.active for s in steps] == [[0] if s.timestep >= 500 else [1] for s in steps]


def test_recognition_and_the_pipeline_defaults(wan):
    assert family_of_folder(wan / "wan22").name == "wan"
    defaults = model_defaults(wan / "wan22")
    assert defaults == {"steps": 50, "guidance_scale": 5.0, "sampler": "unipc", "t_split": 875.0}
    assert "t_split" not in model_defaults(wan / "wan21")


def test_the_cli_runs_the_pair_with_a_second_guidance_scale(wan, tmp_path, capsys):
    from pangudraw.imageio import read_record

    out = tmp_path / "wan.png"
    args = ["generate", PROMPT, "--structure", wan / "wan22", "--steps", "4", "--size", "32"]
    code, err = cli([*args, "-g", "3", "--guidance-2", "2", "--seed", "3", "-o", out], capsys)
    assert code == 0, err
    record = read_record(out)
    assert record["split"] == 875.0 and record["guidance_scale_2"] == 2.0
    assert record["sampler"] == "unipc" and record["steps"] == 4
    expert = load_expert(wan / "wan22")
    again = generate(
        expert,
        None,
        PROMPT,
        seed=3,
        num_inference_steps=4,
        guidance_scale=3.0,
        guidance_scale_2=2.0,
        **SIZE,
    ).to_pil()[0]
    from PIL import Image

    with Image.open(out) as png:
        assert list(png.convert("RGB").getdata()) == list(again.getdata())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"boundary_ratio": None}, "needs a boundary_ratio"),
        ({"boundary_ratio": 1.5}, "needs a boundary_ratio"),
        ({"scheduler": {"prediction_type": "epsilon"}}, "flow_prediction"),
        ({"scheduler": {"flow_shift": -1.0}}, "flow_shift"),
    ],
)
def test_a_bad_wan_folder_is_refused_in_one_line(wan, tmp_path, capsys, change, message):
    folder = tmp_path / "bad"
    shutil.copytree(wan / "wan22", folder)
    if "scheduler" in change:
        path = folder / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | change["scheduler"]))
    else:
        path = folder / "model_index.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | change))
    out = tmp_path / "x.png"
    code, err = cli(["generate", PROMPT, "--structure", folder, "--steps", "2", "-o", out], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_either_wan_expert_works_alone_in_a_recipe_and_lays_out_for_sdxl(wan, models, tmp_path):
    """``denoiser = "transformer_2"`` is the low-noise expert alone; the high-noise expert
    lays out for an SDXL texture expert through the bridge."""
    from pangudraw.pipelines import coop_generate
    from pangudraw.recipes import parse_recipe

    folder = wan / "wan22"
    table = {
        "prompt": PROMPT,
        "seed": 2,
        "steps": 4,
        "guidance": 2.0,
        "canvas": {"width": 32, "height": 32},
        "experts": [{"model": str(folder), "denoiser": "transformer_2"}],
    }
    recipe = parse_recipe(table, "r", tmp_path)
    assert recipe.sampler == "unipc"  # the canvas model's own
    alone = coop_generate(recipe).images
    low = load_expert(folder).low_noise
    direct = generate(low, None, PROMPT, seed=2, num_inference_steps=4, guidance_scale=2.0, **SIZE)
    assert (alone - direct.images).abs().max() <= TOL
    table["experts"] = [  # Wan above its sigma 2.3, SDXL below its t = 500 (sigma 1.0)
        {"model": str(folder), "window": {"t": [700, 1000]}, "name": "layout", "size": [32, 48]},
        {"model": str(models["sdxl"]), "window": {"t": [0, 500]}, "name": "texture"},
    ]
    table["canvas"] |= {"expert": "texture"}
    table["steps"] = 6
    steps = []
    out = coop_generate(parse_recipe(table, "r", tmp_path), callback=steps.append)
    assert out.bridges  # the Wan estimates reached SDXL's canvas
    assert [0] in [s.active for s in steps] and [1] in [s.active for s in steps]
    assert torch.isfinite(out.images).all() and out.images.std() > 0.01


def to_comfyui(diffusers_file, out):
    """The same LoRA under the original Wan names ComfyUI files use."""
    from safetensors.torch import load_file, save_file

    names = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}
    converted = {}
    for key, tensor in load_file(diffusers_file).items():
        block, rest = key.removeprefix("transformer.blocks.").split(".", 1)
        attn, rest = rest.split(".", 1)
        layer, kind = rest.rsplit(".lora_", 1)
        side = "self_attn" if attn == "attn1" else "cross_attn"
        down = "lora_down" if kind.startswith("A") else "lora_up"
        converted[f"diffusion_model.blocks.{block}.{side}.{names[layer]}.{down}.weight"] = tensor
    save_file(converted, out)
    return out


def test_a_wan_lora_equals_diffusers_and_its_comfyui_names_load_the_same(wan, tmp_path):
    from pangudraw.loading.models import ModelCache
    from pangudraw.lora import LoraSpec

    folder = wan / "wan22"
    from equality import transformer_lora

    lora = transformer_lora(folder, WanPipeline, tmp_path / "lora", seed=0)
    kwargs = {"seed": 3, "num_inference_steps": 4, "guidance_scale": 2.0, **SIZE}
    expert = ModelCache().get(folder, [LoraSpec(str(lora), 0.8)])
    ours = generate(expert, None, PROMPT, **kwargs).latents
    pipe = WanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name="a")
    pipe.set_adapters(["a"], [0.8])
    reference = pipe(
        PROMPT,
        num_frames=1,
        num_inference_steps=4,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
        **SIZE,
    ).frames[:, :, 0]
    assert (ours - reference).abs().max() <= TOL
    plain = generate(load_expert(folder), None, PROMPT, **kwargs).latents
    assert (plain - ours).abs().max() > 100 * TOL  # the LoRA did something
    comfy = to_comfyui(lora, tmp_path / "comfy.safetensors")
    again = generate(ModelCache().get(folder, [LoraSpec(str(comfy), 0.8)]), None, PROMPT, **kwargs)
    assert (again.latents - ours).abs().max() <= TOL


def test_bfloat16_runs_the_pair_close_to_float32(wan):
    from pangudraw.loading.models import ModelCache

    folder = wan / "wan22"
    kwargs = {"seed": 3, "num_inference_steps": 4, "guidance_scale": 2.0, **SIZE}
    half = generate(ModelCache(dtype="bfloat16").get(folder), None, PROMPT, **kwargs).latents
    full = generate(load_expert(folder), None, PROMPT, **kwargs).latents
    assert torch.isfinite(half).all() and (half - full).abs().max() < 0.1
