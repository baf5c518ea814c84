"""Z-Image: our loop against diffusers' ZImagePipeline (and its img2img pipeline) on a tiny
model, ``-g`` as classic guidance (diffusers' ``guidance_scale`` is ``g - 1``), LoRA."""

import json
import shutil

import pytest
import torch
from diffusers import ZImageImg2ImgPipeline, ZImagePipeline
from PIL import Image

from equality import mask, picture
from pangudraw.families import family_of_folder, model_defaults
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate

PROMPT = "a red apple"
TOL = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from fixtures.tiny_models import tiny_z_image

    path = tmp_path_factory.mktemp("z") / "z_image"
    tiny_z_image(path)
    return path


def theirs(pipe_cls, folder, guidance, output_type="latent", **kwargs):
    pipe = pipe_cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        PROMPT,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(3),
        output_type=output_type,
        **kwargs,
    ).images


@pytest.mark.parametrize("g, size", [(3.0, (32, 32)), (1.0, (32, 48))])
def test_one_z_image_expert_equals_its_pipeline_with_g_as_classic_guidance(folder, g, size):
    """Our ``-g g`` is ZImagePipeline's ``guidance_scale = g - 1``; 1 is off on both."""
    expert = load_expert(folder)
    assert expert.family.name == "z-image" and expert.prediction_type == "flow"
    kwargs = {"height": size[0], "width": size[1], "num_inference_steps": 5}
    ours = generate(expert, None, PROMPT, seed=3, guidance_scale=g, **kwargs)
    assert (ours.latents - theirs(ZImagePipeline, folder, g - 1, **kwargs)).abs().max() <= TOL
    images = theirs(ZImagePipeline, folder, g - 1, "pt", **kwargs)
    assert (ours.images - images).abs().max() <= TOL and ours.images.std() > 0.01
    if g > 1:  # the mapping matters: diffusers' g would be another image
        other = theirs(ZImagePipeline, folder, g, **kwargs)
        assert (ours.latents - other).abs().max() > 100 * TOL


def test_recognition_and_the_pipeline_defaults(folder):
    assert family_of_folder(folder).name == "z-image"
    assert model_defaults(folder) == {"steps": 50, "guidance_scale": 6.0}


def test_z_image_image_to_image_equals_its_pipeline(folder, tmp_path):
    from pangudraw.editing import EditSpec

    picture(tmp_path / "in.png", size=(32, 32))
    edit = EditSpec(str(tmp_path / "in.png"), 0.6)
    ours = generate(
        load_expert(folder),
        None,
        PROMPT,
        seed=3,
        guidance_scale=2.0,
        num_inference_steps=6,
        edit=edit,
    )
    reference = theirs(
        ZImageImg2ImgPipeline,
        folder,
        1.0,
        image=Image.open(tmp_path / "in.png"),
        strength=0.6,
        num_inference_steps=6,
        height=32,
        width=32,
    )
    assert (ours.latents - reference).abs().max() <= TOL


def test_a_z_image_lora_equals_diffusers(folder, tmp_path):
    from equality import lora_latents, transformer_lora

    lora = transformer_lora(folder, ZImagePipeline, tmp_path)
    ours, theirs, plain = lora_latents(folder, ZImagePipeline, lora, 0.7, guidance_scale=0.0)
    assert (ours - theirs).abs().max() <= TOL
    assert (plain - ours).abs().max() > 20 * TOL


def test_a_z_image_folder_without_its_text_encoder_is_refused_in_one_line(folder, tmp_path, capsys):
    from pangudraw.cli.main import main

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    index = json.loads((bad / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "Qwen2_5_VLForConditionalGeneration"]
    (bad / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(SystemExit) as exit:
        main(["generate", PROMPT, "--structure", str(bad), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "text_encoder" in err and err.count("\n") == 1


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_z_image_inpainting_equals_its_pipeline(folder, tmp_path, strength):
    from diffusers import ZImageInpaintPipeline

    from pangudraw.editing import EditSpec

    picture(tmp_path / "in.png", size=(32, 32))
    mask(tmp_path / "mask.png", size=(32, 32), box=(0, 8, 20, 24))
    edit = EditSpec(str(tmp_path / "in.png"), strength, str(tmp_path / "mask.png"))
    ours = generate(
        load_expert(folder),
        None,
        PROMPT,
        seed=3,
        guidance_scale=2.0,
        num_inference_steps=6,
        edit=edit,
    )
    reference = theirs(
        ZImageInpaintPipeline,
        folder,
        1.0,
        image=Image.open(tmp_path / "in.png"),
        mask_image=Image.open(tmp_path / "mask.png"),
        strength=strength,
        num_inference_steps=6,
        height=32,
        width=32,
    )
    assert (ours.latents - reference).abs().max() <= TOL


def test_bfloat16_runs_close_to_float32(folder):
    from pangudraw.loading.models import ModelCache

    kwargs = {"seed": 3, "num_inference_steps": 4, "guidance_scale": 2.0, "height": 32, "width": 32}
    half = generate(ModelCache(dtype="bfloat16").get(folder), None, PROMPT, **kwargs)
    full = generate(load_expert(folder), None, PROMPT, **kwargs)
    assert torch.isfinite(half.images).all()
    assert (half.images - full.images).abs().max() < 0.1
