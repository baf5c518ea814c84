"""SDXL base and refiner (``families/sdxl.py``): recognised from configs and headers
without torch, and one expert equal to ``StableDiffusionXLPipeline``."""

import pytest
from diffusers import StableDiffusionXLPipeline

from equality import TOL, reference, single
from pangudraw.families import BY_NAME, family_of_file, family_of_folder
from pangudraw.loading.models import load_expert
from pangudraw.loading.schedulers import PUBLISHED


def test_sdxl_is_recognised_from_folders_and_file_headers(models, tmp_path):
    for folder in (models["sdxl"], PUBLISHED / "sdxl-base", PUBLISHED / "sdxl-refiner"):
        assert family_of_folder(folder) is BY_NAME["sdxl"], folder
    from fixtures.single_file import write

    for kind in ("sdxl", "sdxl-refiner"):
        write(tmp_path, kind)
        assert family_of_file(tmp_path / f"{kind}.safetensors") is BY_NAME["sdxl"], kind
    assert family_of_folder(models["sd"]) is not BY_NAME["sdxl"]


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_single_sdxl_expert_equals_sdxl_pipeline(models, guidance):
    expert = load_expert(models["sdxl"])
    ours = single(expert, "euler", num_inference_steps=8, guidance_scale=guidance)
    pipe = StableDiffusionXLPipeline.from_pretrained(models["sdxl"])
    theirs = reference(pipe, "euler", num_inference_steps=8, guidance_scale=guidance)
    assert (ours - theirs).abs().max() <= TOL
