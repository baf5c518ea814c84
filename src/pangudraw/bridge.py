"""Moving estimates between experts' latent spaces and resolutions (docs/design.md, section 3).

Only clean estimates (x0) are bridged. A noisy latent is never resized or re-encoded:
upsampled noise is spatially correlated and has the wrong variance. Noise is added
afterwards, fresh, at the target shape (:func:`renoise`).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field

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


def exact_bridge(x0: torch.Tensor, source: Site, target: Site) -> torch.Tensor:
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


@functools.cache
def _translators() -> dict[tuple[str, str], object]:
    """The bundled translators by (source space id, target space id): folders of the zoo
    holding a ``translator.safetensors`` (read once: bridges ask on every step)."""
    from .files import read_json
    from .zoo import MODELS

    found = {}
    for folder in sorted(MODELS.glob("*/translator.safetensors")):
        config = read_json(folder.parent / "config.json", "translator config")
        found[(config.get("source"), config.get("target"))] = folder.parent
    return found


_lock = threading.Lock()


@functools.cache
def _load_translator(folder):
    from .translate import Translator
    from .zoo import check_weights

    check_weights(folder / "translator.safetensors")
    return Translator.load(folder)


def _translator(ids: tuple[str, str]):
    folder = _translators().get(ids)
    if folder is None:
        return None
    with _lock:
        return _load_translator(folder)


def translator_for(source: LatentSpace, target: LatentSpace):
    """The bundled translator trained from ``source`` to ``target``, or None."""
    from .translate import space_id

    return _translator((space_id(source), space_id(target)))


@dataclass
class BridgePolicy:
    """The bridge a generation uses between two sites: with ``mode="learned"`` a bundled
    translator where one was trained for the two latent spaces, the exact bridge for any
    other pair (and always with ``mode="exact"``). ``used`` records, per pair of spaces,
    which bridge ran (what the PNG stores)."""

    mode: str = "exact"
    used: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        from .options import BRIDGE_MODES, check_choice

        check_choice(self.mode, BRIDGE_MODES, "bridge")

    def __call__(self, x0: torch.Tensor, source: Site, target: Site) -> torch.Tensor:
        if source.same_as(target):
            return x0
        from .translate import space_id

        ids = (space_id(source.space), space_id(target.space))
        translator = _translator(ids) if self.mode == "learned" else None
        self.used[" -> ".join(ids)] = "exact" if translator is None else "learned"
        if translator is None:
            return exact_bridge(x0, source, target)
        with torch.no_grad():
            return translator(x0.float(), tuple(target.latent_shape(1)[-2:]))


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
