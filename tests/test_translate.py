"""Learned bridges: bundled translators between latent spaces, used only where trained."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from pangudraw.bridge import BridgePolicy, Site, exact_bridge, translator_for
from pangudraw.errors import UserError
from pangudraw.translate import Translator, TranslatorConfig, space_id


def test_translator_maps_between_grids_of_any_size():
    model = Translator(TranslatorConfig(12, 4, width=16, blocks=1))
    out = model(torch.randn(2, 12, 16, 16), (8, 12))
    assert out.shape == (2, 4, 8, 12)


def test_exact_mode_is_the_exact_bridge_and_says_so(bundled):
    structure, texture = bundled
    source, target = Site(structure.space, (32, 32)), Site(texture.space, (64, 64))
    x0 = torch.randn(2, 12, 16, 16) * 0.5
    bridges = BridgePolicy("exact")
    torch.testing.assert_close(bridges(x0, source, target), exact_bridge(x0, source, target))
    assert list(bridges.used.values()) == ["exact"]
    assert bridges(x0, source, source) is x0  # same site: nothing to bridge
    with pytest.raises(UserError, match="unknown bridge 'fast'"):
        BridgePolicy("fast")


def test_learned_mode_falls_back_to_exact_between_untrained_spaces(tiny_spaces):
    a, b = tiny_spaces
    assert translator_for(a, b) is None
    source, target = Site(a, (32, 32)), Site(b, (32, 32))
    x0 = torch.randn(1, a.channels, 16, 16)
    bridges = BridgePolicy("learned")
    torch.testing.assert_close(bridges(x0, source, target), exact_bridge(x0, source, target))
    assert list(bridges.used.values()) == ["exact"]


@pytest.fixture(scope="module")
def bundled():
    from pangudraw.loading.models import load_expert

    return load_expert("zoo:structure"), load_expert("zoo:texture")


@pytest.fixture(scope="module")
def tiny_spaces():
    from pangudraw.latents import LatentSpace

    return LatentSpace(None, 2), LatentSpace(None, 4)  # no translator between these two


def _heldout_latents(space, size: int) -> torch.Tensor:
    from pathlib import Path

    from pangudraw.imageio import read_image

    folder = Path(__file__).parent / "data" / "emoji_heldout"
    files = sorted(folder.glob("*.png"))[:16]
    images = torch.cat([read_image(f, "RGB", (size, size), "emoji") for f in files]) * 2 - 1
    with torch.no_grad():
        return space.encode(images)


@pytest.mark.parametrize(
    "source_model, source_size, target_model, target_size",
    [
        ("structure", 32, "texture", 64),
        ("texture", 64, "structure", 32),
        ("full", 64, "generator_b", 64),
        ("generator_b", 64, "full", 64),
    ],
)
def test_bundled_translators_are_close_to_the_exact_bridge_on_unseen_emoji(
    source_model, source_size, target_model, target_size
):
    """Emoji never trained on (tests/data/emoji_heldout): the translator's latents are
    within a few percent of the exact bridge's, relative to the latents' variance."""
    from pangudraw.loading.models import load_expert

    source = load_expert(f"zoo:{source_model}").space
    target = load_expert(f"zoo:{target_model}").space
    translator = translator_for(source, target)
    assert translator is not None and translator.config.source == space_id(source)
    s, t = Site(source, (source_size,) * 2), Site(target, (target_size,) * 2)
    x0 = _heldout_latents(source, source_size)
    with torch.no_grad():
        exact = exact_bridge(x0, s, t)
        learned = BridgePolicy("learned")(x0, s, t)
    relative = float(((learned - exact) ** 2).mean() / exact.var())
    assert relative < 0.1, relative


def test_recipes_and_pngs_name_the_bridge(tmp_path, capsys):
    from pangudraw.cli.main import main
    from pangudraw.recipes import parse_recipe, recipe_from_png

    table = {"prompt": "red heart", "experts": [{"model": "zoo:texture"}], "bridge": "learned"}
    recipe = parse_recipe(table, "test", tmp_path)
    assert recipe.bridge == "learned" and recipe.to_table()["bridge"] == "learned"
    with pytest.raises(UserError, match="bridge"):
        parse_recipe({**table, "bridge": "magic"}, "test", tmp_path)

    out = tmp_path / "pair.png"
    main(["generate", "red heart", "--steps", "4", "--seed", "1", "--bridge", "learned",
          "-o", str(out)])  # fmt: skip
    with Image.open(out) as image:
        record = json.loads(image.text["pangu-draw"])
        assert "Bridge: learned" in image.text["parameters"]
    assert record["bridge"] == "learned"
    assert set(record["bridges"].values()) == {"learned"} and len(record["bridges"]) == 2

    # a coop PNG made before bridges were selectable (no key) reproduces with the exact one
    coop = tmp_path / "coop.png"
    main(["coop", "examples/demo_recipe.toml", "--set", "steps=3", "--bridge", "learned",
          "-o", str(coop)])  # fmt: skip
    with Image.open(coop) as image:
        record = json.loads(image.text["pangu-draw"])
    assert record["recipe"]["bridge"] == "learned"
    assert set(record["bridges"].values()) == {"learned"}
    from pangudraw.imageio import png_writer

    del record["recipe"]["bridge"]
    old = tmp_path / "old.png"
    with Image.open(coop) as image, open(old, "wb") as f:
        png_writer(image.convert("RGB"), "old", record)(f)
    assert recipe_from_png(old).bridge == "exact"
    capsys.readouterr()
