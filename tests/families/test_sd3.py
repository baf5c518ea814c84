"""SD3 experts: our loop against diffusers' StableDiffusion3Pipeline."""

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate

PROMPT = "a red apple"
TOL = 1e-4


@pytest.mark.parametrize(
    "model, guidance, negative",
    [("sd3", 1.0, None), ("sd3", 2.0, None), ("sd3", 2.0, "blurry"), ("sd3_no_t5", 2.0, None)],
)
@pytest.mark.parametrize("size", [(32, 32), (32, 48), (36, 44)])
def test_one_sd3_expert_equals_its_pipeline(models, model, guidance, negative, size):
    """Classifier-free guidance over the encoded empty (or given) negative prompt, the
    scheduler's own shifted grid, with and without T5."""
    expert = load_expert(models[model])
    assert expert.family.name == "sd3" and expert.prediction_type == "flow"
    height, width = size
    common = dict(
        negative_prompt=negative,
        num_inference_steps=6,
        guidance_scale=guidance,
        height=height,
        width=width,
    )
    ours = generate(expert, None, PROMPT, seed=3, **common).images
    without_t5 = {"text_encoder_3": None, "tokenizer_3": None} if model == "sd3_no_t5" else {}
    pipe = StableDiffusion3Pipeline.from_pretrained(models[model], **without_t5)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        PROMPT, generator=torch.Generator().manual_seed(3), output_type="pt", **common
    ).images
    assert ours.std() > 0.01
    assert (ours - theirs).abs().max() <= TOL


def test_sd3_and_flux_and_sd_share_one_loop(models):
    """Three families, three VAEs (16, 16 and 4 channels), one fused estimate per step."""
    from pangudraw.recipes import parse_recipe

    table = {
        "prompt": "a red apple",
        "steps": 4,
        "seed": 2,
        "guidance": 2.0,
        "canvas": {"width": 32, "height": 32, "expert": "sd3"},
        "experts": [
            {"name": "sd3", "model": str(models["sd3"])},
            {"name": "flux", "model": str(models["flux_schnell"]), "size": [32, 32]},
            {"name": "sd", "model": str(models["sd"]), "window": {"sigma": [0, 2.0]}},
        ],
    }
    from pangudraw.pipelines import coop_generate

    recipe = parse_recipe(table, "r.toml", models["sd"].parent)
    first = coop_generate(recipe).images
    again = coop_generate(recipe).images
    assert torch.equal(first, again) and first.std() > 0.01


def test_sd3_is_recognised_from_folders_and_file_headers(models, tmp_path):
    from fixtures.single_file import write
    from pangudraw.families import BY_NAME, family_of_file, family_of_folder
    from pangudraw.loading.schedulers import PUBLISHED

    for folder in (models["sd3"], models["sd3_no_t5"], PUBLISHED / "sd3-medium"):
        assert family_of_folder(folder) is BY_NAME["sd3"], folder
    assert family_of_folder(PUBLISHED / "sd35-large") is BY_NAME["sd3"]
    write(tmp_path, "sd3-t5")
    assert family_of_file(tmp_path / "sd3-t5.safetensors") is BY_NAME["sd3"]
