"""Moving estimates between experts' latent spaces and resolutions (docs/design.md, section 3).

Only clean estimates (x0) are bridged. A noisy latent is never resized or re-encoded:
upsampled noise is spatially correlated and has the wrong variance. Noise is added
afterwards, fresh, at the target shape (:func:`renoise`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .imageio import resize_images
from .latents import LatentSpace


@dataclass(frozen=True)
class Site:
    """Where an expert's latents live: a latent space at an image size (height, width) in pixels."""

    space: LatentSpace
    size: tuple[int, int]

    def latent_shape(self, batch: int) -> tuple[int, int, int, int]:
        return self.space.latent_shape(batch, *self.size)

    def same_as(self, other: Site) -> bool:
        return self.size == other.size and self.space.same_as(other.space)


def bridge(x0: torch.Tensor, source: Site, target: Site) -> torch.Tensor:
    """``B(x0) = E_target(resize(D_source(x0)))``, or ``x0`` itself when the sites match.

    Args:
        x0: (B, C_s, h_s, w_s) clean latents at ``source``.
    Returns:
        (B, C_t, h_t, w_t) clean latents at ``target``.
    """
    if source.same_as(target):
        return x0
    images = source.space.decode(x0).float().clamp(-1, 1)
    return target.space.encode(resize_images(images, target.size)).float()


def renoise(
    x0: torch.Tensor, sigma: float, generator: torch.Generator | list[torch.Generator] | None
) -> torch.Tensor:
    """Noise re-sampling: ``x0 + sigma * n`` with fresh ``n ~ N(0, I)`` at ``x0``'s shape, in
    the unit view of :mod:`pangudraw.noise` (finite at sigma = inf: pure noise)."""
    from diffusers.utils.torch_utils import randn_tensor

    from .noise import noisy

    return noisy(x0, randn_tensor(x0.shape, generator=generator, dtype=x0.dtype), sigma)


def native_size(native: tuple[int, int], target: tuple[int, int], multiple: int) -> tuple[int, int]:
    """An expert's working size: its native pixel area at the target's aspect ratio.

    Both sides are rounded to ``multiple`` (the VAE factor times the UNet's downsampling),
    never below one multiple.
    """
    area = native[0] * native[1]
    aspect = target[0] / target[1]
    height = (area * aspect) ** 0.5
    width = height / aspect
    return tuple(max(multiple, round(v / multiple) * multiple) for v in (height, width))
