"""Stable Diffusion 1.x/2.x (``families/sd.py``): recognised from a folder's configs and a
single file's header without torch, and one expert equal to ``StableDiffusionPipeline``."""

import pytest
from diffusers import StableDiffusionPipeline

from equality import TOL, reference, single
from pangudraw.coop import SAMPLERS
from pangudraw.families import BY_NAME, family_of_file, family_of_folder
from pangudraw.loading.models import load_expert
from pangudraw.loading.schedulers import PUBLISHED


def test_sd_is_recognised_from_folders_and_file_headers(models, tmp_path):
    for folder in (models["sd"], models["sd_v"], PUBLISHED / "sd15", PUBLISHED / "sd21"):
        assert family_of_folder(folder) is BY_NAME["sd"], folder
    from fixtures.single_file import write

    write(tmp_path, "sd1")
    assert family_of_file(tmp_path / "sd1.safetensors") is BY_NAME["sd"]
    assert load_expert(tmp_path / "sd1.safetensors").family is BY_NAME["sd"]


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_single_expert_equals_stable_diffusion_pipeline(models, sampler, guidance):
    expert = load_expert(models["sd"])
    ours = single(expert, sampler, num_inference_steps=8, guidance_scale=guidance)
    pipe = StableDiffusionPipeline.from_pretrained(models["sd"])
    theirs = reference(pipe, sampler, num_inference_steps=8, guidance_scale=guidance)
    assert ours.std() > 0.01
    assert (ours - theirs).abs().max() <= TOL


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_v_prediction_expert_equals_its_pipeline(models, sampler):
    expert = load_expert(models["sd_v"])
    assert expert.prediction_type == "v_prediction"
    ours = single(
        expert, sampler, negative_prompt="blurry", num_inference_steps=8, guidance_scale=2.0
    )
    pipe = StableDiffusionPipeline.from_pretrained(models["sd_v"])
    theirs = reference(
        pipe, sampler, num_inference_steps=8, guidance_scale=2.0, negative_prompt="blurry"
    )
    assert (ours - theirs).abs().max() <= TOL
