"""Training losses, separate from the loop. Timestep ranges are hard: drawn only inside."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sample_timesteps(n: int, t_range: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``n`` integer timesteps drawn uniformly from [lo, hi): never outside, never re-weighted."""
    lo, hi = t_range
    return torch.randint(lo, hi, (n,), generator=generator)


@dataclass
class DenoisingLoss:
    """Epsilon-prediction MSE on ``z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n``, t in a range."""

    alphas_cumprod: torch.Tensor  # (T,)
    t_range: tuple[int, int]

    def __call__(
        self,
        unet: torch.nn.Module,
        x0: torch.Tensor,
        embeds: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """x0: (B, C, h, w) clean latents; embeds: (B, L, D) caption embeddings."""
        t = sample_timesteps(x0.shape[0], self.t_range, generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        abar = self.alphas_cumprod[t].to(x0).view(-1, 1, 1, 1)
        z = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        prediction = unet(z, t.to(x0.device), encoder_hidden_states=embeds).sample
        return F.mse_loss(prediction.float(), noise.float())


@dataclass
class VAELoss:
    """Reconstruction (L1 + MSE) plus ``kl_weight`` times the KL to N(0, I), per element."""

    kl_weight: float

    def __call__(self, vae: torch.nn.Module, images: torch.Tensor, generator: torch.Generator):
        """images: (B, 3, H, W) in [-1, 1]."""
        posterior = vae.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(images)
        latents = posterior.mean + posterior.std * noise
        reconstruction = vae.decode(latents).sample
        rec = F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images)
        kl = 0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar).mean()
        return rec + self.kl_weight * kl
