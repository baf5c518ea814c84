"""The bundled emoji models (``families/emoji.py``): recognised from their folders without
torch (MiniLM named in ``model_index.json``), sharing one MiniLM per model cache, and
drawing the same images however they are loaded."""

import torch

from pangudraw.families import BY_NAME, family_of_file, family_of_folder
from pangudraw.loading.models import ModelCache, load_expert
from pangudraw.pipelines import generate
from pangudraw.zoo import MODELS


def test_the_bundled_generators_are_recognised_and_nothing_else_is(models):
    for name in ("structure", "texture", "full", "generator_b"):
        assert family_of_folder(MODELS / name) is BY_NAME["emoji"], name
    assert family_of_folder(models["sd"]) is BY_NAME["sd"]  # a CLIP text encoder: not ours
    assert family_of_file(MODELS / "vae_a" / "diffusion_pytorch_model.safetensors") is None


def test_one_minilm_serves_every_bundled_model_of_a_cache_and_the_images_agree():
    cache = ModelCache()
    structure, texture = cache.get("structure"), cache.get("texture")
    assert structure.family is BY_NAME["emoji"] and structure.text.shared
    assert structure.text.encoder is texture.text.encoder  # loaded once per cache
    alone = load_expert(MODELS / "texture")
    assert alone.text.encoder is not texture.text.encoder
    kwargs = {"num_inference_steps": 4, "seed": 2}
    shared = generate(structure, texture, "red heart", **kwargs).images
    apart = generate(load_expert(MODELS / "structure"), alone, "red heart", **kwargs).images
    assert torch.equal(shared, apart)
