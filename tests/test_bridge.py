import math

import pytest
import torch
import torch.nn.functional as F

from pangudraw.bridge import Site, exact_bridge, native_size, renoise
from pangudraw.latents import LatentSpace
from pangudraw.noise import noise_of

PIXELS = LatentSpace(None)
UNSHUFFLED = LatentSpace(None, unshuffle=2)  # 12 channels at 1/2: exactly invertible


def smooth_image(size: int, batch: int = 2) -> torch.Tensor:
    """Low-frequency test images in [-1, 1]."""
    u = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    channels = [torch.sin(2 * math.pi * (xx + k / 3)) * torch.cos(math.pi * yy) for k in range(3)]
    return 0.8 * torch.stack(channels)[None].repeat(batch, 1, 1, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a, b).item()
    return math.inf if mse == 0 else 10 * math.log10(4 / mse)


def test_same_site_is_the_identity_without_codec_calls():
    class Exploding(LatentSpace):
        def encode(self, images, generator=None):
            raise AssertionError("encode called")

        def decode(self, latents):
            raise AssertionError("decode called")

    site = Site(Exploding(None), (16, 16))
    x0 = torch.randn(1, 3, 16, 16)
    assert exact_bridge(x0, site, site) is x0


def test_round_trip_through_two_codecs_is_exact():
    images = smooth_image(32)
    a, b = Site(PIXELS, (32, 32)), Site(UNSHUFFLED, (32, 32))
    in_b = exact_bridge(PIXELS.encode(images), a, b)
    assert in_b.shape == (2, 12, 16, 16)
    back = PIXELS.decode(exact_bridge(in_b, b, a))
    assert psnr(back, images) > 100  # exact up to float rounding


def test_round_trip_through_another_resolution_keeps_a_smooth_image():
    images = smooth_image(64)
    high, low = Site(UNSHUFFLED, (64, 64)), Site(PIXELS, (32, 32))
    back = UNSHUFFLED.decode(
        exact_bridge(exact_bridge(UNSHUFFLED.encode(images), high, low), low, high)
    )
    assert back.shape == images.shape
    assert psnr(back, images) > 30  # stated: > 30 dB for a low-frequency image at half size


def noise_statistics(noise: torch.Tensor) -> tuple[float, float, float]:
    """Mean, standard deviation and horizontal neighbour correlation of a noise field."""
    left, right = noise[..., :-1].flatten(), noise[..., 1:].flatten()
    correlation = torch.corrcoef(torch.stack([left, right]))[0, 1]
    return noise.mean().item(), noise.std().item(), correlation.item()


def test_resampled_noise_is_white_and_upsampled_noise_is_not():
    torch.manual_seed(0)
    sigma = 2.0
    low, high = Site(PIXELS, (32, 32)), Site(PIXELS, (64, 64))
    x0_low = PIXELS.encode(smooth_image(32, batch=8))
    x0_high = exact_bridge(x0_low, low, high)

    # The rule: bridge the clean estimate, then add fresh noise at the target shape.
    resampled = renoise(x0_high, sigma, torch.Generator().manual_seed(1))
    mean, std, corr = noise_statistics(noise_of(resampled, x0_high, sigma))
    assert abs(mean) < 0.02 and abs(std - 1) < 0.02 and abs(corr) < 0.03

    # What the rule forbids: resize the noisy latent itself.
    noisy_low = renoise(x0_low, sigma, torch.Generator().manual_seed(1))
    naive = F.interpolate(noisy_low, size=(64, 64), mode="bilinear", align_corners=False)
    mean, std, corr = noise_statistics(noise_of(naive, x0_high, sigma))
    assert abs(std - 1) > 0.2 or abs(corr) > 0.3  # the same check fails
    assert corr > 0.3 and std < 0.8


@pytest.mark.parametrize(
    "native, target, multiple, expected",
    [
        ((32, 32), (64, 64), 8, (32, 32)),  # same aspect: native size
        ((32, 32), (64, 128), 8, (24, 48)),  # wide: same area, target aspect
        ((64, 64), (96, 32), 16, (112, 32)),  # rounded to the multiple
        ((16, 16), (16, 160), 8, (8, 48)),  # never below one multiple
    ],
)
def test_native_size_keeps_area_and_takes_the_target_aspect(native, target, multiple, expected):
    assert native_size(native, target, multiple) == expected
