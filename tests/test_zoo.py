"""The bundled models: they load, match their cards and manifest, and do their job."""

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from pangudraw.latents import LatentSpace
from pangudraw.zoo import MANIFEST, MODELS, list_models, weight_hashes

EMOJI = Path(__file__).parent / "data" / "emoji"


def emoji_images() -> torch.Tensor:
    """The eight shipped Noto Emoji as (8, 3, 64, 64) in [-1, 1]."""
    tensors = []
    for path in sorted(EMOJI.glob("*.png")):
        with Image.open(path) as image:
            data = torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float32)
        tensors.append(data.view(64, 64, 3).permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(tensors)


def test_weights_match_the_manifest():
    assert json.loads(MANIFEST.read_text()) == weight_hashes()


@pytest.mark.parametrize("model", list_models(), ids=lambda m: m.name)
def test_every_model_loads_and_matches_its_card(model):
    config = json.loads((model.path / "training_config.json").read_text())
    card = (model.path / "README.md").read_text()
    assert f"- stage: `{config['stage']}`" in card
    assert f"- resolution: {config['resolution']} px" in card
    resources = json.loads((model.path / "resources.json").read_text())
    assert f"optimizer steps: {resources['optimizer_steps']}" in card
    if config["stage"] == "vae":
        vae = AutoencoderKL.from_pretrained(model.path, torch_dtype=torch.float32)
        assert vae.config.latent_channels == config["vae_model"]["latent_channels"]
        assert vae.config.scaling_factor == pytest.approx(1 / resources["latent_std_raw"])


@pytest.mark.skipif(not (MODELS / "vae_a").is_dir(), reason="vae_a not bundled")
def test_vae_a_reconstructs_emoji_with_unit_variance_latents():
    vae = AutoencoderKL.from_pretrained(MODELS / "vae_a", torch_dtype=torch.float32).eval()
    space = LatentSpace(vae)
    images = emoji_images()
    with torch.no_grad():
        latents = space.encode(images)
        back = space.decode(latents).clamp(-1, 1)
    assert latents.shape == (8, 4, 16, 16)
    mse = ((back - images) ** 2).mean((1, 2, 3))
    psnr = 10 * torch.log10(4 / mse)
    # Measured: median 27.2 dB over 256 random emoji; these eight: mean 26.3 dB, lowest
    # 19.6 dB (the tree's leaves). A regression guard just below the measured values.
    assert psnr.mean() > 25 and psnr.min() > 18, psnr
    assert 0.5 < latents.std().item() < 1.5
    assert math.isfinite(latents.mean().item())
