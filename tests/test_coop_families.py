"""Coop across the 2026 latent spaces: examples/three_spaces.toml (SDXL's 4 channels,
Z-Image's 16, FLUX.2's patched channels) on tiny models, each expert with its own prompt,
window and guidance, in one loop."""

from pathlib import Path

import pytest
import torch

from pangudraw.pipelines import coop_generate
from pangudraw.recipes import parse_recipe
from pangudraw.tomlconf import read_toml

EXAMPLE = Path(__file__).parents[1] / "examples" / "three_spaces.toml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, models):
    from fixtures.tiny_models import tiny_flux2_klein, tiny_z_image

    root = tmp_path_factory.mktemp("three")
    tiny_z_image(root / "z_image")
    tiny_flux2_klein(root / "klein")
    return {"layout": models["sdxl"], "middle": root / "z_image", "finish": root / "klein"}


def test_three_latent_spaces_join_in_one_loop(tiny, tmp_path):
    table = read_toml(EXAMPLE, "recipe")
    for expert in table["experts"]:
        expert["model"] = str(tiny[expert["name"]])
        expert["size"] = [32, 32]  # the tiny models' scale
    table["canvas"] |= {"width": 32, "height": 32}
    table["steps"] = 8
    recipe = parse_recipe(table, str(EXAMPLE), tmp_path)
    steps = []
    out = coop_generate(recipe, callback=steps.append)
    active = [tuple(s.active) for s in steps]
    assert {(0,), (1,), (2,)} <= set(active), active  # each window met
    sources = {pair.split(" -> ")[0] for pair in out.bridges}
    targets = {pair.split(" -> ")[1] for pair in out.bridges}
    assert len(sources) == 3 and len(targets) == 3  # each space into the canvas's and back
    assert torch.isfinite(out.images).all() and out.images.std() > 0.01
    # each expert's own prompt and guidance are its own: another prompt for the layout
    # expert changes the picture
    table["experts"][0]["prompt"] = "a blue whale"
    other = coop_generate(parse_recipe(table, str(EXAMPLE), tmp_path)).images
    assert (other - out.images).abs().max() > 1e-3
