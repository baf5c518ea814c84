"""Upper bounds on what one request may ask for, checked before any work.

A request for a million steps or a gigapixel batch is refused at once with what it would
need, instead of running for days or dying in an allocation. The bounds on sizes and on
the number of images can be raised with environment variables (``PANGU_DRAW_MAX_SIDE``,
``PANGU_DRAW_MAX_IMAGES``) by a user who has the machine for more; the memory check
compares an estimate with this machine's memory and cannot be turned off.

Design: docs/design.md, section 5.
"""

from __future__ import annotations

import math
import os

from .errors import UserError

MAX_SEED = 2**32 - 1  # as A1111 and ComfyUI: seeds are 32-bit
MAX_STEPS = 1000  # no sampler takes more steps than the 1000 training timesteps


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"environment variable {name}={raw!r} must be a positive integer")
    return int(raw)


def max_side() -> int:
    """Largest image side in pixels (``PANGU_DRAW_MAX_SIDE``, default 4096)."""
    return _env_limit("PANGU_DRAW_MAX_SIDE", 4096)


def max_images() -> int:
    """Most images one command generates (``PANGU_DRAW_MAX_IMAGES``, default 256)."""
    return _env_limit("PANGU_DRAW_MAX_IMAGES", 256)


def check_int(value: int, name: str, lo: int, hi: int, hint: str = "") -> int:
    """``value`` if lo <= value <= hi, else a :class:`UserError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UserError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}{hint}")
    return value


def check_finite(value: float, name: str) -> float:
    """``value`` if it is a finite number (NaN and infinity are errors)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_true_cfg(value: float) -> float:
    """A true classifier-free guidance scale (Flux): finite and at least 1 (1 is off)."""
    if check_finite(value, "true CFG scale") < 1:
        raise UserError(f"true CFG scale {value:g} is below 1; 1 turns it off")
    return float(value)


def check_request(
    steps: int, num_images: int, seed: int, width: int | None, height: int | None
) -> None:
    """The numbers of a generation request, within their bounds."""
    check_int(steps, "steps", 1, MAX_STEPS)
    env = " (raise PANGU_DRAW_MAX_{} for more)"
    check_int(num_images, "number of images", 1, max_images(), env.format("IMAGES"))
    check_int(seed, "seed", 0, MAX_SEED)
    if seed + num_images - 1 > MAX_SEED:
        raise UserError(f"seeds {seed}..{seed + num_images - 1} go beyond {MAX_SEED}")
    for name, value in (("width", width), ("height", height)):
        if value is not None:
            check_int(value, name, 1, max_side(), env.format("SIDE"))


def machine_memory() -> int:
    """Physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(estimate: float, what: str) -> None:
    """Refuse a request whose estimated peak memory exceeds this machine's."""
    available = machine_memory()
    if estimate > available:
        raise UserError(
            f"{what} needs about {_gib(estimate)} of memory and this machine has "
            f"{_gib(available)}; ask for fewer or smaller images"
        )


# Bytes per pixel of one image that the cheapest pipeline still holds: the decoded image,
# the VAE decoder's first feature maps (64 channels at least) and the PNG encoding.
PIXEL_FLOOR_BYTES = 4 * (3 + 2 * 64)


def pixel_estimate(num_images: int, height: int, width: int) -> float:
    """A lower bound on the memory of decoding ``num_images`` images of that size."""
    return num_images * height * width * PIXEL_FLOOR_BYTES


def network_estimate(
    batch: int, tokens: int, channels: int, guided: bool, pixels: int, decoder_channels: int
) -> float:
    """Rough peak bytes of one denoiser call plus the VAE decode, in float32.

    ``tokens`` latent positions, ``channels`` the UNet's first block: a diffusers UNet keeps
    about forty feature maps of that size alive (skip connections, attention and
    feed-forward intermediates). The decode holds about six maps of ``decoder_channels``
    at full resolution. It is an order of magnitude, meant to refuse the impossible.
    """
    unet = 4 * batch * (2 if guided else 1) * tokens * channels * 40
    decode = 4 * batch * pixels * decoder_channels * 6
    return unet + decode
