"""The networks a stage trains: small diffusers UNets, VAEs and ControlNets from config tables.

A config's ``[unet]`` / ``[vae_model]`` table overrides the defaults below; the block types
follow from the number of blocks, and the sizes the stage fixes (input channels, text
width, sample size) come from its latent space and text encoder.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

from ..errors import UserError
from ..expert import Expert
from ..latents import LatentSpace
from .config import TrainConfig

UNET_DEFAULTS = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 4,
}
VAE_DEFAULTS = {
    "block_out_channels": [32, 64],
    "latent_channels": 4,
    "norm_num_groups": 8,
    "layers_per_block": 1,
}


def unet_blocks(n: int) -> dict:
    """Cross-attention everywhere but the lowest resolution (as SD's UNet)."""
    return {
        "down_block_types": ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1),
    }


def vae_blocks(n: int) -> dict:
    return {
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
    }


def architecture(defaults: dict, given: dict, blocks) -> dict:
    """The defaults overridden by ``given``, with block types for its number of blocks."""
    arch = defaults | given
    return blocks(len(arch["block_out_channels"])) | arch


def build_model(
    config: TrainConfig, space: LatentSpace, text_dim: int, base: Expert | None = None
) -> torch.nn.Module:
    """The untrained network of ``config``'s stage, seeded by ``config.seed``."""
    torch.manual_seed(config.seed)
    if base is not None:
        # The conditioning embedding brings control images down to the latent size.
        steps = space.factor.bit_length() - 1
        channels = [16, 32, 96, 256][: steps + 1] if steps else [16]
        return ControlNetModel.from_unet(base.network, conditioning_embedding_out_channels=channels)
    if config.stage == "vae":
        arch = architecture(VAE_DEFAULTS, config.vae_model, vae_blocks)
        fixed = {"in_channels": 3, "out_channels": 3, "sample_size": config.resolution}
        return _construct("vae_model", AutoencoderKL, arch, **fixed)
    arch = architecture(UNET_DEFAULTS, config.unet, unet_blocks)
    multiple = space.factor * 2 ** (len(arch["block_out_channels"]) - 1)
    if config.resolution % multiple:
        raise UserError(
            f"resolution {config.resolution} is not a multiple of {multiple} "
            "(latent factor x UNet downsampling)"
        )
    return _construct(
        "unet",
        UNet2DConditionModel,
        arch,
        sample_size=config.resolution // space.factor,
        in_channels=space.channels,
        out_channels=space.channels,
        cross_attention_dim=text_dim,
    )


def _construct(table: str, cls: type, arch: dict, **fixed) -> torch.nn.Module:
    try:
        return cls(**fixed, **arch)
    except (TypeError, ValueError) as exc:  # a wrong value in the config's table
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"[{table}] does not make a {cls.__name__}: {reason}") from exc
