"""The key prefixes of whole checkpoints in the original layouts (ldm / sgm for SD and
SDXL, Stability's SD3 files, ComfyUI's whole Flux.1 files): facts of the files, read by
the family modules to recognise a file from its header and by :mod:`pangudraw.original`
to convert it. No imports: anything may read it."""

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_CLIP = "cond_stage_model.transformer."
SD2_CLIP = "cond_stage_model.model."
XL_CLIP = "conditioner.embedders.0.transformer."
XL_BIGG = "conditioner.embedders.1.model."
REFINER_BIGG = "conditioner.embedders.0.model."
SD3_CLIP_L = "text_encoders.clip_l.transformer."
SD3_CLIP_G = "text_encoders.clip_g.transformer."
SD3_T5 = "text_encoders.t5xxl.transformer."
FLUX_BLOCKS = UNET + "double_blocks."  # Black Forest Labs' names under the UNet prefix
SD3_BLOCKS = UNET + "joint_blocks."


def has(keys, *prefixes: str) -> bool:
    """Whether any key starts with one of ``prefixes``."""
    return any(k.startswith(prefixes) for k in keys)
