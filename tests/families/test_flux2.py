"""FLUX.2 [klein]: our loop against diffusers' Flux2KleinPipeline on a tiny model (its VAE's
patches folded into channels under batch-norm statistics, the empirical shift), a
step-distilled folder without guidance, LoRA; FLUX.2 [dev] against Flux2Pipeline."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from diffusers import Flux2KleinPipeline, Flux2Pipeline

from pangudraw.families import family_of_folder, model_defaults
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate

PROMPT = "a red apple"
TOL = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from fixtures.tiny_models import tiny_flux2_klein

    root = tmp_path_factory.mktemp("flux2")
    tiny_flux2_klein(root / "klein")
    tiny_flux2_klein(root / "klein_distilled", seed=1, is_distilled=True)
    return root


def raw(expert, latents):
    """Our canvas latents as the pipeline's ``output_type="latent"`` gives them: unfolded,
    batch-norm statistics undone."""
    mean, std = expert.space._normalisation(latents)
    return F.pixel_shuffle(latents * std + mean, 2)


def theirs(folder, g, output_type="latent", **kwargs):
    pipe = Flux2KleinPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=PROMPT,
        guidance_scale=g,
        generator=torch.Generator().manual_seed(3),
        output_type=output_type,
        **kwargs,
    ).images


@pytest.mark.parametrize("g, size, steps", [(3.0, (32, 32), 6), (1.0, (32, 48), 4)])
def test_one_klein_expert_equals_its_pipeline(folders, g, size, steps):
    """The empirical mu depends on the steps too: two step counts, guided and not."""
    folder = folders / "klein"
    expert = load_expert(folder)
    assert expert.family.name == "flux2" and expert.space.patched and expert.space.factor == 4
    kwargs = {"height": size[0], "width": size[1], "num_inference_steps": steps}
    ours = generate(expert, None, PROMPT, seed=3, guidance_scale=g, **kwargs)
    assert (raw(expert, ours.latents) - theirs(folder, g, **kwargs)).abs().max() <= TOL
    images = theirs(folder, g, "pt", **kwargs)
    assert (ours.images - images).abs().max() <= TOL and ours.images.std() > 0.01


def test_a_step_distilled_klein_takes_no_guidance_and_its_own_defaults(folders):
    folder = folders / "klein_distilled"
    assert family_of_folder(folder).name == "flux2"
    assert model_defaults(folder) == {"steps": 4}
    assert model_defaults(folders / "klein") == {"steps": 50, "guidance_scale": 4.0}
    expert = load_expert(folder)
    kwargs = {"height": 32, "width": 32, "num_inference_steps": 4, "seed": 3}
    guided = generate(expert, None, PROMPT, guidance_scale=4.0, **kwargs)
    plain = generate(expert, None, PROMPT, guidance_scale=1.0, **kwargs)
    assert torch.equal(guided.latents, plain.latents)
    reference = theirs(folder, 4.0, height=32, width=32, num_inference_steps=4)
    assert (raw(expert, guided.latents) - reference).abs().max() <= TOL


def test_a_klein_lora_equals_diffusers(folders, tmp_path):
    from equality import lora_latents, transformer_lora

    folder = folders / "klein"
    lora = transformer_lora(folder, Flux2KleinPipeline, tmp_path)
    ours, theirs, plain = lora_latents(folder, Flux2KleinPipeline, lora, 0.7, guidance_scale=1.0)
    assert (raw(load_expert(folder), ours) - theirs).abs().max() <= TOL
    assert (plain - ours).abs().max() > 20 * TOL  # (a small random LoRA: 6.7e-3)


def test_a_folder_naming_the_other_text_encoder_is_refused_in_one_line(folders, tmp_path, capsys):
    """klein's files under [dev]'s text encoder class: one line, no traceback."""
    from pangudraw.cli.main import main

    dev = tmp_path / "dev"
    shutil.copytree(folders / "klein", dev)
    index = json.loads((dev / "model_index.json").read_text())
    index["_class_name"] = "Flux2Pipeline"
    index["text_encoder"] = ["transformers", "Mistral3ForConditionalGeneration"]
    (dev / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(SystemExit) as exit:
        main(["generate", PROMPT, "--structure", str(dev), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "config" in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------- [dev]


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """A tiny [dev] folder as published (a PixtralProcessor named as its tokenizer) and
    the pipeline it was saved from, which holds the folder's text tokenizer instead."""
    from fixtures.tiny_models import tiny_flux2_dev

    folder = tmp_path_factory.mktemp("flux2") / "dev"
    return folder, tiny_flux2_dev(folder)


@pytest.mark.parametrize("g, size", [(4.0, (32, 32)), (2.5, (32, 48))])
def test_one_flux2_dev_expert_equals_its_pipeline(dev, g, size):
    """Mistral's layers 10, 20 and 30 through the chat template after the pipeline's system
    message; ``-g`` is [dev]'s distilled guidance value, no negative pass."""
    from transformers import PreTrainedTokenizerFast

    folder, saved = dev
    expert = load_expert(folder)
    assert expert.family.name == "flux2" and not expert.encode_prompt([PROMPT], None, g).guided
    kwargs = {"height": size[0], "width": size[1], "num_inference_steps": 3}
    ours = generate(expert, None, PROMPT, seed=3, guidance_scale=g, **kwargs)
    # the reference: diffusers' Flux2Pipeline with the folder's text tokenizer where its
    # processor goes (the processor needs torchvision; the text path is the tokenizer's)
    text = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    pipe = Flux2Pipeline(
        scheduler=saved.scheduler, vae=saved.vae, text_encoder=saved.text_encoder,
        tokenizer=text, transformer=saved.transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        prompt=PROMPT, guidance_scale=g, generator=torch.Generator().manual_seed(3),
        output_type="pt", **kwargs,
    ).images  # fmt: skip
    assert (ours.images - theirs).abs().max() <= TOL and ours.images.std() > 0.01
    other = generate(expert, None, PROMPT, seed=3, guidance_scale=g + 2, **kwargs)
    assert (other.images - ours.images).abs().max() > 10 * TOL  # the value reaches it


def test_flux2_dev_recognition_and_defaults(dev):
    folder, _ = dev
    assert family_of_folder(folder).name == "flux2"
    assert model_defaults(folder) == {"steps": 50, "guidance_scale": 4.0}


def test_bfloat16_runs_close_to_float32(folders):
    from pangudraw.loading.models import ModelCache

    kwargs = {"seed": 3, "num_inference_steps": 4, "guidance_scale": 2.0, "height": 32, "width": 32}
    half = generate(ModelCache(dtype="bfloat16").get(folders / "klein"), None, PROMPT, **kwargs)
    full = generate(load_expert(folders / "klein"), None, PROMPT, **kwargs)
    assert torch.isfinite(half.images).all()
    assert (half.images - full.images).abs().max() < 0.1
