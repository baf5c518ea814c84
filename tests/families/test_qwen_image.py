"""Qwen-Image: our loop against diffusers' QwenImagePipeline (and its img2img and inpaint
pipelines) on a tiny model; ``-g`` is its true CFG against the empty negative prompt."""

import pytest
import torch
from diffusers import QwenImageImg2ImgPipeline, QwenImageInpaintPipeline, QwenImagePipeline
from PIL import Image

from equality import mask, picture
from pangudraw.families import family_of_folder, model_defaults
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate

PROMPT = "a red apple"
TOL = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from fixtures.tiny_models import tiny_qwen_image

    path = tmp_path_factory.mktemp("qwen") / "qwen_image"
    tiny_qwen_image(path)
    return path


def packed(latents):
    b, c, h, w = latents.shape
    return QwenImagePipeline._pack_latents(latents, b, c, h, w)


def theirs(pipe_cls, folder, g, prompt=PROMPT, output_type="latent", **kwargs):
    pipe = pipe_cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    guided = {"negative_prompt": "", "true_cfg_scale": g} if g > 1 else {}
    generators = [torch.Generator().manual_seed(3 + i) for i in range(len(prompt))]
    return pipe(
        prompt,
        generator=generators if isinstance(prompt, list) else generators[0],
        output_type=output_type,
        **guided,
        **kwargs,
    ).images


@pytest.mark.parametrize("g, size", [(3.0, (32, 32)), (1.0, (32, 48))])
def test_one_qwen_image_expert_equals_its_pipeline(folder, g, size):
    """``-g g`` is ``true_cfg_scale = g`` against ``""`` (1: no guidance)."""
    expert = load_expert(folder)
    assert expert.family.name == "qwen-image" and expert.space.video
    kwargs = {"height": size[0], "width": size[1], "num_inference_steps": 5}
    ours = generate(expert, None, PROMPT, seed=3, guidance_scale=g, **kwargs)
    assert (
        packed(ours.latents) - theirs(QwenImagePipeline, folder, g, **kwargs)
    ).abs().max() <= TOL
    images = theirs(QwenImagePipeline, folder, g, output_type="pt", **kwargs)
    assert (ours.images - images).abs().max() <= TOL and ours.images.std() > 0.01


def test_prompts_of_different_lengths_in_one_batch_equal_the_pipeline(folder):
    """The shorter prompt's states are zero-padded and masked, as the pipeline does."""
    prompts = ["a red apple", "a very long prompt about a green pear on a wooden table"]
    kwargs = {"height": 32, "width": 32, "num_inference_steps": 4}
    ours = generate(
        load_expert(folder), None, prompts, seed=3, num_images=2, guidance_scale=2.5, **kwargs
    )
    reference = theirs(QwenImagePipeline, folder, 2.5, prompts, **kwargs)
    assert (packed(ours.latents) - reference).abs().max() <= TOL


def test_recognition_and_the_pipeline_defaults(folder):
    assert family_of_folder(folder).name == "qwen-image"
    assert model_defaults(folder) == {"steps": 50, "guidance_scale": 4.0}


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_qwen_image_to_image_and_inpainting_equal_their_pipelines(folder, tmp_path, strength):
    from pangudraw.editing import EditSpec

    image = picture(tmp_path / "in.png", size=(32, 32))
    mask(tmp_path / "mask.png", size=(32, 32), box=(4, 8, 28, 24))
    common = {"num_inference_steps": 6, "height": 32, "width": 32}
    expert = load_expert(folder)
    i2i = generate(
        expert,
        None,
        PROMPT,
        seed=3,
        guidance_scale=2.0,
        edit=EditSpec(str(image), strength),
        **common,
    )
    ref = theirs(
        QwenImageImg2ImgPipeline, folder, 2.0, image=Image.open(image), strength=strength, **common
    )
    assert (packed(i2i.latents) - ref).abs().max() <= TOL
    edit = EditSpec(str(image), strength, str(tmp_path / "mask.png"))
    inpainted = generate(expert, None, PROMPT, seed=3, guidance_scale=2.0, edit=edit, **common)
    ref = theirs(
        QwenImageInpaintPipeline,
        folder,
        2.0,
        image=Image.open(image),
        mask_image=Image.open(tmp_path / "mask.png"),
        strength=strength,
        **common,
    )
    assert (packed(inpainted.latents) - ref).abs().max() <= TOL


def test_a_qwen_image_lora_equals_diffusers(folder, tmp_path):
    from equality import lora_latents, transformer_lora

    lora = transformer_lora(folder, QwenImagePipeline, tmp_path)
    ours, theirs, plain = lora_latents(folder, QwenImagePipeline, lora, 0.7)
    assert (packed(ours) - theirs).abs().max() <= TOL
    assert (plain - ours).abs().max() > 20 * TOL


def test_bfloat16_runs_close_to_float32(folder):
    from pangudraw.loading.models import ModelCache

    kwargs = {"seed": 3, "num_inference_steps": 4, "guidance_scale": 2.0, "height": 32, "width": 32}
    half = generate(ModelCache(dtype="bfloat16").get(folder), None, PROMPT, **kwargs)
    full = generate(load_expert(folder), None, PROMPT, **kwargs)
    assert torch.isfinite(half.images).all()
    assert (half.images - full.images).abs().max() < 0.1
