import pytest
import torch

from fixtures.tiny_models import tiny_vae
from pangudraw.latents import LatentSpace


def test_scaled_latents_follow_scaling_and_shift():
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.25)
    space = LatentSpace(vae)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    raw = vae.encode(images).latent_dist.mode()
    latents = space.encode(images)
    torch.testing.assert_close(latents, (raw - 0.25) * 0.5)
    torch.testing.assert_close(space.decode(latents), vae.decode(raw).sample)


def test_latents_mean_and_std_take_precedence():
    vae = tiny_vae()
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.0, 2.0, 0.5, 1.5]
    vae.register_to_config(scaling_factor=0.5, latents_mean=mean, latents_std=std)
    space = LatentSpace(vae)
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    raw = vae.encode(images).latent_dist.mode()
    expected = (
        (raw - torch.tensor(mean).view(1, -1, 1, 1)) * 0.5 / torch.tensor(std).view(1, -1, 1, 1)
    )
    torch.testing.assert_close(space.encode(images), expected)
    torch.testing.assert_close(space.decode(expected), vae.decode(raw).sample)


def test_encode_samples_only_with_a_generator():
    space = LatentSpace(tiny_vae())
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(space.encode(images), space.encode(images))
    a = space.encode(images, torch.Generator().manual_seed(0))
    b = space.encode(images, torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)


def test_shape_channels_and_factor():
    space = LatentSpace(tiny_vae(latent_channels=8, blocks=3))
    assert (space.channels, space.factor) == (8, 4)
    assert space.latent_shape(2, 32, 64) == (2, 8, 8, 16)
    with pytest.raises(ValueError, match="width 30 is not divisible by the VAE factor 4"):
        space.latent_shape(1, 32, 30)
    assert space.encode(torch.zeros(1, 3, 32, 64)).shape == (1, 8, 8, 16)


def test_pixel_space_is_the_identity():
    space = LatentSpace(None)
    images = torch.rand(1, 3, 8, 8)
    assert space.encode(images) is images and space.decode(images) is images
    assert (space.channels, space.factor) == (3, 1)


def test_same_space_means_same_codec():
    a = LatentSpace(tiny_vae(seed=0))
    assert a.same_as(a)
    assert a.same_as(LatentSpace(tiny_vae(seed=0)))  # equal weights, another object
    assert not a.same_as(LatentSpace(tiny_vae(seed=1)))  # other weights
    assert not a.same_as(LatentSpace(tiny_vae(latent_channels=8)))  # other config
    assert not a.same_as(LatentSpace(None))
    assert LatentSpace(None).same_as(LatentSpace(None))


def test_the_training_cache_encodes_as_inference_does(tmp_path, models):
    """One latent codec: for a VAE with latents_mean / latents_std the cached training
    latents (mean and std of the posterior) are exactly what inference encodes to."""
    from fixtures.tiny_models import mini_dataset
    from pangudraw.loading.models import load_expert
    from pangudraw.train.config import TrainConfig
    from pangudraw.train.stagedata import prepare_data

    vae = tiny_vae()
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.0, 2.0, 0.5, 1.5]
    vae.register_to_config(scaling_factor=0.5, latents_mean=mean, latents_std=std)
    vae.save_pretrained(tmp_path / "vae")
    space = LatentSpace(vae)
    mini_dataset(tmp_path / "data", n=4, size=16, small=0, broken=0)
    config = TrainConfig(stage="texture", data=str(tmp_path / "data"), output="", resolution=16)
    text = load_expert(models["sd"]).text
    data = prepare_data(config, space, text, str(tmp_path / "vae"))
    images = data.pool.pixels.float() / 127.5 - 1
    with torch.no_grad():
        torch.testing.assert_close(data.mean, space.encode(images))
        generator = torch.Generator().manual_seed(0)
        sample = space.encode(images, generator)
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(sample, data.mean + data.std * noise)
        # Not the old shift-and-scale rule, which ignored latents_mean / latents_std.
        raw = vae.encode(images).latent_dist.mean
        assert not torch.allclose(data.mean, raw * 0.5, atol=1e-3)
