"""Component files of the 2026 families, as ComfyUI publishes them: the diffusion model, the
text encoder and the VAE each in its own ``.safetensors`` (``split_files/`` in ComfyUI's
repositories), named by a model spec.

As for the original layouts (:mod:`.original`), each configuration is read from the tensor
shapes, the keys are mapped by diffusers' own single-file conversion where it has one, and
the result is loaded strictly into a model built on the meta device: a missing or extra
key or a wrong shape is a one-line error. What the shapes cannot say (a text model's rotary
base, a norm's epsilon) is the published model's value, written here. Tokenizers come from
a folder the spec names (the diffusers folder's ``tokenizer/``, or any copy of it): their
vocabularies are not in any package this project may depend on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError
from .original import indices, load_strict, numel, shape

# Qwen3-4B's published values that no tensor holds (its config.json).
QWEN3_FIXED = {"rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 40960}


def _strip(source: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in source.items()}


def convert_qwen3(source: dict, what: str):
    """A Qwen3 text model (``transformers.Qwen3Model``) from its Hugging Face weights, with
    or without the causal LM's ``model.`` level and ``lm_head`` (dropped: the pipelines
    read hidden states)."""
    from transformers import Qwen3Config, Qwen3Model
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    layout = "a Qwen3 text model"
    sd = _strip({k: v for k, v in source.items() if not k.startswith("lm_head.")}, "model.")
    vocab, hidden = shape(sd, "embed_tokens.weight", what, layout)
    layers = indices(sd, "layers.")
    if not layers or layers != list(range(len(layers))):
        raise UserError(f"{what} has no numbered layers.N: it is not {layout}")
    head_dim = shape(sd, "layers.0.self_attn.q_norm.weight", what, layout)[0]
    queries = shape(sd, "layers.0.self_attn.q_proj.weight", what, layout)[0]
    keys = shape(sd, "layers.0.self_attn.k_proj.weight", what, layout)[0]
    if queries % head_dim or keys % head_dim:
        raise UserError(f"{what}: projections of {queries} and {keys} rows do not split into heads")
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=shape(sd, "layers.0.mlp.gate_proj.weight", what, layout)[0],
        num_hidden_layers=len(layers),
        num_attention_heads=queries // head_dim,
        num_key_value_heads=keys // head_dim,
        head_dim=head_dim,
        attention_bias="layers.0.self_attn.q_proj.bias" in sd,
        **QWEN3_FIXED,
    )
    with torch.device("meta"):
        model = Qwen3Model(config)
    model.rotary_emb = Qwen3RotaryEmbedding(config)  # computed, not stored
    return load_strict(model, sd, what, layout)


def tokenizer_folder(spec: Path, name: str, classes: tuple[type, ...], what: str):
    """A tokenizer saved in folder ``name`` (relative to the spec): tokenizer files only,
    read by the first of ``classes`` whose files are there."""
    folder = spec.parent / name
    if not folder.is_dir():
        raise UserError(f"{spec}: tokenizer {name!r} is not a folder (give the model's tokenizer/)")
    for cls in classes:
        try:
            tokenizer = cls.from_pretrained(folder)
        except Exception:  # noqa: BLE001 (tokenizer files are someone else's data; the
            continue  # Rust tokenizers library raises plain Exceptions)
        if getattr(tokenizer, "chat_template", None):  # it must render, here and now
            from .families.base import chat_template

            chat_template(tokenizer, f"{spec}: {folder}")
        return tokenizer
    raise UserError(f"{spec}: {folder} holds no {what} tokenizer")


def convert_z_image_transformer(source: dict, in_channels: int, what: str):
    """Z-Image's S3-DiT from its original layout (``x_embedder``, fused ``qkv``,
    ``cap_embedder``, ``noise_refiner``, ``context_refiner``), by diffusers' conversion."""
    from diffusers import ZImageTransformer2DModel
    from diffusers.loaders.single_file_utils import (
        convert_z_image_transformer_checkpoint_to_diffusers,
    )

    layout = "a Z-Image diffusion model"
    plain = _strip(source, "model.diffusion_model.")
    patch_in = shape(plain, "x_embedder.weight", what, layout)
    dim, flat = patch_in[0], patch_in[1]
    patch = round((flat / in_channels) ** 0.5)
    if patch * patch * in_channels != flat:
        raise UserError(f"{what}: patches of {flat} values do not fit {in_channels} channels")
    head_dim = shape(plain, "layers.0.attention.q_norm.weight", what, layout)[0]
    fused = shape(plain, "layers.0.attention.qkv.weight", what, layout)[0]
    heads = dim // head_dim
    kv_heads = (fused // head_dim - heads) // 2
    config = {
        "all_patch_size": (patch,),
        "all_f_patch_size": (1,),
        "in_channels": in_channels,
        "dim": dim,
        "n_layers": len(indices(plain, "layers.")),
        "n_refiner_layers": len(indices(plain, "noise_refiner.")),
        "n_heads": heads,
        "n_kv_heads": kv_heads,
        "cap_feat_dim": shape(plain, "cap_embedder.1.weight", what, layout)[1],
    }
    if heads * head_dim != dim or kv_heads < 1 or head_dim != 128:
        raise UserError(
            f"{what}: heads of {head_dim} values in a width of {dim} are not Z-Image's "
            "(its rotary axes are laid out for heads of 128)"
        )
    converted = convert_z_image_transformer_checkpoint_to_diffusers(dict(plain))
    if numel(converted.values()) + numel(
        v for k, v in plain.items() if k == "norm_final.weight"
    ) != numel(plain.values()):
        raise UserError(f"{what}: some values were not mapped (not {layout})")
    with torch.device("meta"):
        model = ZImageTransformer2DModel(**config)
    return load_strict(model, converted, what, layout)


WAN_HEAD = 128  # every Wan transformer's attention head width (1.3B, 5B, 14B)


def convert_wan_transformer(source: dict, what: str):
    """A Wan 2.1 / 2.2 text-to-video transformer from its original layout (``blocks.N``
    with ``self_attn``, ``cross_attn``, ``ffn``, ``modulation``; ``head.head``), by
    diffusers' conversion; image-to-video and VACE files are refused."""
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    layout = "a Wan text-to-video diffusion model"
    plain = _strip(source, "model.diffusion_model.")
    if any(k.startswith(("img_emb.", "vace_", "motion_encoder.", "face_")) for k in plain):
        raise UserError(
            f"{what}: an image-to-video or VACE Wan model; pangu-draw takes text to video"
        )
    dim, channels, *patch = shape(plain, "patch_embedding.weight", what, layout)
    if dim % WAN_HEAD or len(patch) != 3:
        raise UserError(f"{what}: a width of {dim} is not a Wan transformer's (heads of 128)")
    out = shape(plain, "head.head.weight", what, layout)[0]
    cells = patch[0] * patch[1] * patch[2]
    config = {
        "patch_size": tuple(patch),
        "num_attention_heads": dim // WAN_HEAD,
        "attention_head_dim": WAN_HEAD,
        "in_channels": channels,
        "out_channels": out // cells,
        "text_dim": shape(plain, "text_embedding.0.weight", what, layout)[1],
        "freq_dim": shape(plain, "time_embedding.0.weight", what, layout)[1],
        "ffn_dim": shape(plain, "blocks.0.ffn.0.weight", what, layout)[0],
        "num_layers": len(indices(plain, "blocks.")),
        "cross_attn_norm": "blocks.0.norm3.weight" in plain,
    }
    converted = convert_wan_transformer_to_diffusers(dict(plain))
    if numel(converted.values()) != numel(plain.values()):
        raise UserError(f"{what}: some values were not mapped (not {layout})")
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    model.rope = WanRotaryPosEmbed(WAN_HEAD, config["patch_size"], 1024)  # computed
    return load_strict(model, converted, what, layout)


def convert_umt5(source: dict, what: str):
    """UMT5's encoder (Wan's text encoder, ``umt5_xxl``) in Hugging Face's layout: every
    layer has its own relative position table."""
    from .original import convert_t5

    prefix = "text_encoders.umt5xxl.transformer."
    if not any(k.startswith(prefix) for k in source):
        source = {prefix + k: v for k, v in source.items()}
    return convert_t5(source, prefix, what, "a UMT5 encoder", umt5=True)


def convert_wan_vae(source: dict, what: str, qwen_image: bool = False):
    """Wan 2.1's video VAE (``wan_2.1_vae.safetensors``; ``qwen_image``: Qwen-Image's
    ``qwen_image_vae``, the same architecture and latent statistics, as
    ``AutoencoderKLQwenImage``) from its original layout by diffusers' conversion, which
    knows its one block layout (four levels of two residual blocks)."""
    from diffusers import AutoencoderKLQwenImage, AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    layout = "Qwen-Image's VAE" if qwen_image else "Wan 2.1's VAE"
    base = shape(source, "encoder.conv1.weight", what, layout)[0]
    z_dim = shape(source, "conv2.weight", what, layout)[0]
    if z_dim != 16:
        raise UserError(f"{what}: {z_dim} latent channels; Wan 2.1's VAE has 16")
    converted = convert_wan_vae_to_diffusers(dict(source))
    if numel(converted.values()) != numel(source.values()):
        raise UserError(f"{what}: some values were not mapped (not {layout})")
    with torch.device("meta"):
        model = (AutoencoderKLQwenImage if qwen_image else AutoencoderKLWan)(base, z_dim=z_dim)
    return load_strict(model, converted, what, layout)


def check_text_width(network_takes: int, encoder_gives: int, what: str) -> None:
    """The diffusion model and its text encoder must agree on the text's width."""
    if network_takes != encoder_gives:
        raise UserError(
            f"{what} takes {network_takes}-wide text; the text encoder gives {encoder_gives}"
        )


# Qwen2.5-VL-7B's published values that no tensor holds (its config.json): the text model's
# rotary base and multimodal sections, the vision tower's heads.
QWEN25_VL_FIXED = {"rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24], "vision_heads": 16}


def convert_qwen25_vl(source: dict, what: str):
    """Qwen2.5-VL (Qwen-Image's text encoder, ``qwen_2.5_vl_7b``) from its Hugging Face
    weights, in the names its release uses (``model.layers``, ``visual``) or the ones
    transformers 5 writes (``model.language_model``, ``model.visual``). The pipelines use
    its text model; the vision tower loads too, as the class holds it."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VLRotaryEmbedding,
        Qwen2_5_VLVisionRotaryEmbedding,
    )

    layout = "a Qwen2.5-VL model"
    sd = {}
    for key, value in source.items():
        if key.startswith("visual."):
            key = "model." + key
        elif key.startswith("model.") and not key.startswith(
            ("model.language_model.", "model.visual.")
        ):
            key = "model.language_model." + key[len("model.") :]
        sd[key] = value
    text, vision = "model.language_model.", "model.visual."
    vocab, hidden = shape(sd, text + "embed_tokens.weight", what, layout)
    queries = shape(sd, text + "layers.0.self_attn.q_proj.weight", what, layout)[0]
    keys = shape(sd, text + "layers.0.self_attn.k_proj.weight", what, layout)[0]
    head_dim = 2 * sum(QWEN25_VL_FIXED["mrope_section"])
    if queries % head_dim or keys % head_dim:
        raise UserError(f"{what}: heads of {head_dim} do not divide {queries} and {keys} rows")
    v_hidden = shape(sd, vision + "patch_embed.proj.weight", what, layout)[0]
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": shape(sd, text + "layers.0.mlp.gate_proj.weight", what, layout)[0],
            "num_hidden_layers": len(indices(sd, text + "layers.")),
            "num_attention_heads": queries // head_dim,
            "num_key_value_heads": keys // head_dim,
            "rope_theta": QWEN25_VL_FIXED["rope_theta"],
            "rope_scaling": {"type": "mrope", "mrope_section": QWEN25_VL_FIXED["mrope_section"]},
        },
        vision_config={
            "depth": len(indices(sd, vision + "blocks.")),
            "hidden_size": v_hidden,
            "intermediate_size": shape(sd, vision + "blocks.0.mlp.gate_proj.weight", what, layout)[
                0
            ],
            "num_heads": QWEN25_VL_FIXED["vision_heads"],
            "out_hidden_size": shape(sd, vision + "merger.mlp.2.weight", what, layout)[0],
        },
        vocab_size=vocab,
    )
    sd.setdefault("lm_head.weight", sd[text + "embed_tokens.weight"])
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.model.language_model.rotary_emb = Qwen2_5_VLRotaryEmbedding(config.text_config)
    model.model.visual.rotary_pos_emb = Qwen2_5_VLVisionRotaryEmbedding(config.vision_config)
    return load_strict(model, sd, what, layout)


def convert_qwen_image_transformer(source: dict, what: str):
    """Qwen-Image's MMDiT (``qwen_image_*.safetensors``): ComfyUI's files hold diffusers'
    own names, as diffusers' single-file loader takes them."""
    from diffusers import QwenImageTransformer2DModel
    from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

    layout = "a Qwen-Image diffusion model"
    plain = _strip(source, "model.diffusion_model.")
    inner, packed = shape(plain, "img_in.weight", what, layout)
    if inner % 128:
        raise UserError(f"{what}: a width of {inner} is not Qwen-Image's (heads of 128)")
    config = {
        "patch_size": 2,
        "in_channels": packed,
        "out_channels": shape(plain, "proj_out.weight", what, layout)[0] // 4,
        "num_layers": len(indices(plain, "transformer_blocks.")),
        "attention_head_dim": 128,
        "num_attention_heads": inner // 128,
        "joint_attention_dim": shape(plain, "txt_in.weight", what, layout)[1],
        "guidance_embeds": any(k.startswith("time_text_embed.guidance_embedder.") for k in plain),
    }
    with torch.device("meta"):
        model = QwenImageTransformer2DModel(**config)
    model.pos_embed = QwenEmbedRope(theta=10000, axes_dim=[16, 56, 56], scale_rope=True)
    return load_strict(model, plain, what, layout)
