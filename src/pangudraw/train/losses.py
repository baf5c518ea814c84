"""Training losses, separate from the loop. Timestep ranges are hard: drawn only inside."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Batch:
    """One process's share of a step: clean inputs, caption embeddings, control images."""

    x0: torch.Tensor  # (B, C, h, w) latents, or (B, 3, H, W) images for the VAE
    embeds: torch.Tensor | None  # (B, L, D)
    control: torch.Tensor | None  # (B, 3, H, W) in [0, 1]
    generator: torch.Generator


def sample_timesteps(n: int, t_range: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``n`` integer timesteps drawn uniformly from [lo, hi): never outside, never re-weighted."""
    lo, hi = t_range
    return torch.randint(lo, hi, (n,), generator=generator)


@dataclass
class DenoisingLoss:
    """Epsilon-prediction MSE on ``z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n``, t in a range."""

    alphas_cumprod: torch.Tensor  # (T,)
    t_range: tuple[int, int]

    def noisy(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_t, t, noise) for the batch, drawn from its generator."""
        x0 = batch.x0
        t = sample_timesteps(x0.shape[0], self.t_range, batch.generator)
        noise = torch.randn(x0.shape, generator=batch.generator).to(x0)
        abar = self.alphas_cumprod[t].to(x0).view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t.to(x0.device), noise

    def __call__(self, unet: torch.nn.Module, batch: Batch) -> torch.Tensor:
        z, t, noise = self.noisy(batch)
        prediction = unet(z, t, encoder_hidden_states=batch.embeds).sample
        return F.mse_loss(prediction.float(), noise.float())


@dataclass
class ControlNetLoss(DenoisingLoss):
    """The frozen base UNet's epsilon-MSE with the trained ControlNet's residuals added."""

    base: torch.nn.Module | None = None

    def __call__(self, controlnet: torch.nn.Module, batch: Batch) -> torch.Tensor:
        z, t, noise = self.noisy(batch)
        down, mid = controlnet(
            z,
            t,
            encoder_hidden_states=batch.embeds,
            controlnet_cond=batch.control,
            return_dict=False,
        )
        prediction = self.base(
            z,
            t,
            encoder_hidden_states=batch.embeds,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        return F.mse_loss(prediction.float(), noise.float())


@dataclass
class VAELoss:
    """Reconstruction (L1 + MSE) plus ``kl_weight`` times the KL to N(0, I), per element."""

    kl_weight: float

    def __call__(self, vae: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """batch.x0: (B, 3, H, W) images in [-1, 1]."""
        images = batch.x0
        posterior = vae.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=batch.generator).to(images)
        latents = posterior.mean + posterior.std * noise
        reconstruction = vae.decode(latents).sample
        rec = F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
        kl = 0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar).mean()
        return rec + self.kl_weight * kl
