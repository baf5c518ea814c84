"""Tiny SD 1.x, SDXL and SDXL-refiner models written as original-layout single files.

Random diffusers / transformers models (the ground truth) are mapped back to Stable
Diffusion's own key names by hand (:mod:`pangu_fixture`'s inverse mappings), and each is
also saved as the diffusers folder it would be (its twin), with the tokenizers and
schedulers those families publish.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pangu_fixture import _perturb, bigg_to_openclip, unet_to_sgm, vae_to_sgm

CLIP_WIDTH, BIGG_WIDTH = 64, 64  # 64-wide heads, as the real text towers


def clip_l(seed: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=CLIP_WIDTH if not projection else BIGG_WIDTH,
        intermediate_size=128,
        num_hidden_layers=2 if not projection else 3,
        num_attention_heads=1,
        max_position_embeddings=77,
        projection_dim=BIGG_WIDTH,
        hidden_act="quick_gelu" if not projection else "gelu",
        eos_token_id=2,
    )
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    _perturb(model)
    return model.eval()


def unet(seed: int, family: str):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    common = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2 if family != "sdxl-refiner" else 1,
    }
    if family == "sd1":  # convolution projections, 8 heads, attention on all but the last level
        model = UNet2DConditionModel(
            **common,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64, 64),
            cross_attention_dim=CLIP_WIDTH,
            attention_head_dim=8,
        )
    else:  # linear projections, 64-wide heads, pooled text + size numbers
        numbers = 6 if family == "sdxl" else 5
        refiner = family == "sdxl-refiner"
        model = UNet2DConditionModel(
            **common,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
            if not refiner
            else ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
            if not refiner
            else ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(64, 64, 128),
            cross_attention_dim=BIGG_WIDTH + (0 if refiner else CLIP_WIDTH),
            attention_head_dim=(1, 1, 2),
            transformer_layers_per_block=(2, 2, 2) if refiner else (1, 1, 2),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=BIGG_WIDTH + numbers * 256,
        )
    _perturb(model)
    return model.eval()


def vae(seed: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    model = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        scaling_factor=scaling_factor,
    )
    _perturb(model)
    return model.eval()


def _clip_keys(model, prefix: str) -> dict:
    sd = model.state_dict()
    if not any(k.startswith("text_model.") for k in sd):  # transformers 5's layout
        sd = {"text_model." + k: v for k, v in sd.items()}
    return {prefix + k: v for k, v in sd.items()}


def write(folder: Path, family: str, seed: int = 0, dtype=torch.float16) -> dict:
    """``folder/FAMILY.safetensors`` (the original layout, stored as ``dtype``) and
    ``folder/FAMILY`` (the diffusers twin, float32 values rounded the same way). Returns
    the ground-truth modules."""
    from diffusers import (
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )
    from safetensors.torch import save_file

    from pangudraw.convert import sgm
    from pangudraw.convert.single import SD1_SCHEDULER, SDXL_SCHEDULER

    parts = {"unet": unet(seed, family)}
    parts["vae"] = vae(seed + 1, 0.18215 if family == "sd1" else 0.13025)
    tensors = {"model.diffusion_model." + k: v for k, v in unet_to_sgm(parts["unet"]).items()}
    tensors |= {"first_stage_model." + k: v for k, v in vae_to_sgm(parts["vae"]).items()}
    if family == "sd1":
        parts["text_encoder"] = clip_l(seed + 2)
        tensors |= _clip_keys(parts["text_encoder"], "cond_stage_model.transformer.")
    else:
        if family == "sdxl":
            parts["text_encoder"] = clip_l(seed + 2)
            tensors |= _clip_keys(parts["text_encoder"], "conditioner.embedders.0.transformer.")
        parts["text_encoder_2"] = clip_l(seed + 3, projection=True)
        prefix = (
            "conditioner.embedders.1.model."
            if family == "sdxl"
            else ("conditioner.embedders.0.model.")
        )
        tensors |= {prefix + k: v for k, v in bigg_to_openclip(parts["text_encoder_2"]).items()}
    # what Stable Diffusion's trainer saves beside the weights
    tensors["alphas_cumprod"] = torch.linspace(0.999, 0.001, 1000)
    tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    file = folder / f"{family}.safetensors"
    save_file(tensors, file)

    with torch.no_grad():  # the twin holds the values the file holds
        for module in parts.values():
            for p in module.parameters():
                p.copy_(p.to(dtype).float())
    if family == "sd1":
        pipe = StableDiffusionPipeline(
            **parts,
            tokenizer=sgm.clip_tokenizer("<|endoftext|>"),
            scheduler=PNDMScheduler.from_config(SD1_SCHEDULER),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            **parts,
            tokenizer=sgm.clip_tokenizer("<|endoftext|>"),
            tokenizer_2=sgm.clip_tokenizer("!"),
            scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        )
    else:
        pipe = StableDiffusionXLImg2ImgPipeline(
            **parts,
            text_encoder=None,
            tokenizer=None,
            tokenizer_2=sgm.clip_tokenizer("!"),
            scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
        )
    pipe.save_pretrained(folder / family)
    return parts
