"""Latent spaces: the codec between pixel images in [-1, 1] and an expert's scaled latents.

Design: docs/design.md, section 3.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL


def _public(config) -> dict:
    """A model config without bookkeeping keys such as ``_name_or_path``."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


@dataclass(frozen=True)
class LatentSpace:
    """A VAE with its latent normalisation, or a pixel space when ``vae`` is None.

    A pixel space folds each ``unshuffle`` x ``unshuffle`` patch into channels
    (``pixel_unshuffle``): an exactly invertible codec of 3 * unshuffle^2 channels at
    1/unshuffle; ``unshuffle=1`` is plain pixels. Scaled VAE latents are
    ``z = (raw - mean) * scaling_factor / std`` where ``mean`` and ``std`` are the VAE's
    ``latents_mean`` / ``latents_std`` when it has them, else ``shift_factor`` and 1
    (SD3 / Flux), else 0 and 1 (SD 1.x / SDXL).
    """

    vae: AutoencoderKL | None
    unshuffle: int = 1

    @property
    def channels(self) -> int:
        if self.vae is None:
            return 3 * self.unshuffle**2
        config = self.vae.config
        if self.patched:
            return config.latent_channels * math.prod(config.patch_size)
        if self.doubled:
            return 2 * config.latent_channels
        return config.z_dim if self.video else config.latent_channels

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each side."""
        if self.vae is None:
            return self.unshuffle
        if self.video:  # Wan's and Qwen-Image's causal video VAEs
            return 2 ** len(self.vae.config.temperal_downsample)
        ratio = getattr(self.vae.config, "spatial_compression_ratio", None)
        if ratio:  # HunyuanImage's: 32x
            return ratio
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return factor * self.vae.config.patch_size[0] if self.patched else factor

    @property
    def patched(self) -> bool:
        """Flux.2's VAE: its latents are 2x2 patches folded into channels and normalised by
        the VAE's batch-norm statistics (the space the transformer works in)."""
        return self.vae is not None and hasattr(self.vae, "bn")

    @property
    def doubled(self) -> bool:
        """HunyuanImage's refiner VAE: a causal video VAE whose one latent frame its
        pipeline repeats and folds into channels (``[frame, frame]``, twice the channels);
        decoding reads the second copy, as the pipeline's ``_restore_image_tokens_order``."""
        refiner = "AutoencoderKLHunyuanImageRefiner"
        return self.vae is not None and type(self.vae).__name__ == refiner

    @property
    def video(self) -> bool:
        """A video VAE (Wan, Qwen-Image): 5-d tensors, of which an image is one frame."""
        return self.vae is not None and hasattr(self.vae.config, "temperal_downsample")

    @property
    def decoder_width(self) -> int:
        """How many channels the decoder's feature maps have at full resolution (for memory
        estimates: the largest maps it holds); 0 for pixels. A 2-d decoder's last
        upsampling brings its second-narrowest level's width to full size (SD's and SDXL's
        256, HunyuanImage's 256 where its widest level is 1024 at 1/32); a video VAE: its
        widest, at most."""
        if self.vae is None:
            return 0
        config = self.vae.config
        if self.video:
            return (getattr(config, "decoder_base_dim", None) or config.base_dim) * max(
                config.dim_mult
            )
        widths = config.block_out_channels
        return widths[1] if len(widths) > 1 else widths[0]

    @property
    def _scaling(self) -> float:
        return getattr(self.vae.config, "scaling_factor", None) or 1.0

    @property
    def _dtype(self) -> torch.dtype:
        # Not ``vae.dtype``: that walks every parameter, and bridges call this every step.
        return next(self.vae.parameters()).dtype

    @property
    def _device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Latent shape for ``height`` x ``width`` pixel images (each divisible by ``factor``)."""
        for name, size in (("height", height), ("width", width)):
            if size % self.factor:
                raise ValueError(
                    f"{name} {size} is not divisible by the VAE factor {self.factor}; "
                    f"use a multiple of {self.factor}"
                )
        return (batch, self.channels, height // self.factor, width // self.factor)

    def _normalisation(
        self, like: torch.Tensor
    ) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        config = self.vae.config
        if self.patched:
            bn = self.vae.bn
            mean = bn.running_mean.view(1, -1, 1, 1).to(like)
            return mean, torch.sqrt(bn.running_var.view(1, -1, 1, 1) + config.batch_norm_eps).to(
                like
            )
        if getattr(config, "latents_mean", None) is not None:
            shape = (1, -1, 1, 1)
            mean = torch.tensor(config.latents_mean).view(shape).to(like)
            std = torch.tensor(config.latents_std).view(shape).to(like)
            return mean, std
        return getattr(config, "shift_factor", None) or 0.0, 1.0

    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/f, W/f).

        Deterministic (the posterior mode) unless a generator is given, then a sample.
        """
        mean, std = self.encode_posterior(images)
        if generator is None or std is None:
            return mean
        if self.doubled:  # one draw for the frame, repeated as the frame is
            draw = torch.randn(mean[:, : mean.shape[1] // 2].shape, generator=generator)
            return mean + std * torch.cat([draw, draw], dim=1).to(mean)
        return mean + std * torch.randn(mean.shape, generator=generator).to(mean)

    def encode_posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B, 3, H, W) in [-1, 1] -> the scaled posterior's mean and standard
        deviation, each (B, C, H/f, W/f); std is None for a pixel space.

        Training caches these and samples ``mean + std * n``: the same normalisation as
        :meth:`encode`, so a model is trained on the latents it is sampled with.
        """
        if self.vae is None:
            pixels = F.pixel_unshuffle(images, self.unshuffle) if self.unshuffle > 1 else images
            return pixels, None
        where = images.device
        images = images.to(self._device, self._dtype)
        frames = self.video or self.doubled
        posterior = self.vae.encode(images[:, :, None] if frames else images).latent_dist
        mean, std = posterior.mean.to(where), posterior.std.to(where)
        if frames:  # the one frame
            mean, std = mean[:, :, 0], std[:, :, 0]
        if self.doubled:
            mean, std = torch.cat([mean, mean], dim=1), torch.cat([std, std], dim=1)
        if self.patched:
            mean, std = F.pixel_unshuffle(mean, 2), F.pixel_unshuffle(std, 2)
        shift, spread = self._normalisation(mean)
        scale = self._scaling / spread
        return (mean - shift) * scale, std * scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, h*f, w*f) in about [-1, 1] (not clamped)."""
        if self.vae is None:
            return F.pixel_shuffle(latents, self.unshuffle) if self.unshuffle > 1 else latents
        latents = latents.to(self._dtype)
        mean, std = self._normalisation(latents)
        raw = (latents * std / self._scaling + mean).to(self._device)
        if self.patched:
            raw = F.pixel_shuffle(raw, 2)
        if self.doubled:
            raw = raw[:, raw.shape[1] // 2 :]
        if self.video or self.doubled:
            return self.vae.decode(raw[:, :, None]).sample[:, :, 0].to(latents.device)
        return self.vae.decode(raw).sample.to(latents.device)

    def same_as(self, other: LatentSpace) -> bool:
        """True when both spaces encode every image to the same latents."""
        if self.vae is None or other.vae is None:
            return self.vae is None and other.vae is None and self.unshuffle == other.unshuffle
        if self.vae is other.vae:
            return True
        if _public(self.vae.config) != _public(other.vae.config):
            return False
        return self._weights_digest == other._weights_digest

    @cached_property
    def _weights_digest(self) -> str:
        # Once per space: bridges ask same_as on every step.
        digest = hashlib.sha256()
        for name, tensor in sorted(self.vae.state_dict().items()):
            digest.update(name.encode())
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
