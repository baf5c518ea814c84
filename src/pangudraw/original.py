"""Original-layout (ldm / sgm) UNets, VAEs and CLIP text towers as diffusers models.

Stable Diffusion's own code (``ldm``, and ``sgm`` for SDXL) saves one state dict per model:
``model.diffusion_model.*`` (the UNet), ``first_stage_model.*`` (the VAE) and the text
towers (a Hugging Face ``CLIPTextModel`` or an OpenCLIP text model). Here the diffusers
configuration is read from the tensor shapes, the keys are mapped by diffusers' own
single-file conversion, and the result is loaded strictly into a model built on the meta
device: a missing or extra key, a wrong shape, or a value no mapping used is an error, so
nothing is guessed or dropped silently. Nothing is fetched from the hub.

What the shapes do not hold is passed in by the caller: the attention head width (64 in
SD 2.x, SDXL and PanGu-Draw v3; SD 1.x has 8 heads at every level), the VAE's scaling
factor and the width of each size embedding of SDXL's vector condition (256).

T5 encoders (SD3's third text encoder, Flux's second) come in Hugging Face's own layout;
their configuration is read from the shapes too, and T5's tokenizer ships in the package.

One module for every original layout (SD's, SDXL's, SD3's MMDiT, Flux.1's, T5): they share
the shape readers, the strict loader and the tokenizer files, and it is read as a table of
mappings (hence over 500 lines). Used by the family modules (``families/*.py``:
``from_original``, for single files and model specs, :mod:`.loading.single`) and by the
PanGu-Draw v3 converter (:mod:`.convert.pangu`); the key prefixes of whole checkpoints are
in :mod:`.layouts`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import torch

from .errors import UserError
from .layouts import UNET, VAE

SIZE_EMBEDDING = 256  # sgm's ConcatTimestepEmbedderND(outdim=256): one per size number
SD1_HEADS = 8  # SD 1.x: 8 heads at every level (diffusers' attention_head_dim=8)
DATA = Path(__file__).parent / "tokenizers"  # shipped tokenizer files (README there)
CLIP_WHAT = "the CLIP text model"
# Buffers a training run saves beside the weights (the DDPM schedule, derived from the
# betas; the EMA copy of the UNet, which single files prune or carry under ``model_ema.``),
# and buffers derived from the architecture: read and dropped.
SCHEDULE_BUFFERS = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
}
# ... and the VAE's training loss (LPIPS and a discriminator), which some SD 1.x training
# checkpoints still carry.
IGNORED_PREFIXES = ("model_ema.", "denoiser.", "first_stage_model.loss.")
IGNORED_TAILS = ("position_ids", "logit_scale", "attn_mask")


def part(tensors: dict, prefix: str) -> dict:
    """The tensors under ``prefix`` (keys kept), without the ones every loader drops."""
    return {
        k: v
        for k, v in tensors.items()
        if k.startswith(prefix)
        and not k.startswith(IGNORED_PREFIXES)
        and k.rsplit(".", 1)[-1] not in IGNORED_TAILS
    }


CLIP_BPE = (
    "bpe_simple_vocab_16e6.txt.gz",
    "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
)
# T5 v1.1's SentencePiece unigram vocabulary (32,000 pieces and 100 sentinels), as SD3
# and Flux.1 use it, in the ``tokenizers`` JSON format.
T5_TOKENIZER = (
    "t5_tokenizer.json.gz",
    "fdc1945f69027833709ac6976273c25ce523960c0d20b041f13e4ca900a15dd3",
)
# Clip's BPE: 256 byte characters, their end-of-word forms, 48,894 merges, two specials.
_MERGES = 49152 - 256 - 2


def shape(sd: dict, key: str, what: str, layout: str) -> torch.Size:
    if key not in sd:
        raise UserError(f"{what} has no {key}: it is not {layout}")
    return sd[key].shape


def indices(sd: dict, prefix: str) -> list[int]:
    """Sorted distinct integers that follow ``prefix`` in the keys."""
    found = set()
    for key in sd:
        if key.startswith(prefix):
            head = key[len(prefix) :].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def unet_config(
    sd: dict, what: str, layout: str, head_channels: int | None, sample_size: int
) -> dict:
    """A diffusers ``UNet2DConditionModel`` config from an ldm/sgm UNet's shapes (keys
    without the ``model.diffusion_model.`` prefix). ``head_channels`` None: SD 1.x's 8
    heads at every level; otherwise heads of that width."""
    first = shape(sd, "input_blocks.0.0.weight", what, layout)
    model_channels, in_channels = first[0], first[1]
    downsamples = [i for i in indices(sd, "input_blocks.") if f"input_blocks.{i}.0.op.weight" in sd]
    if not downsamples:
        raise UserError(f"{what} has no downsampling blocks: it is not {layout}")
    per_level = downsamples[0] - 1  # resnets per level
    levels = len(downsamples) + 1
    mult, depths = [], []
    for level in range(levels):
        block = 1 + level * (per_level + 1)
        out = shape(sd, f"input_blocks.{block}.0.in_layers.2.weight", what, layout)[0]
        mult.append(out // model_channels)
        depths.append(len(indices(sd, f"input_blocks.{block}.1.transformer_blocks.")))
    mid_depth = len(indices(sd, "middle_block.1.transformer_blocks."))
    if not any(depths) or not mid_depth:
        raise UserError(f"{what} has no attention blocks: it is not {layout}")
    attn = next(k for k in sd if k.endswith("attn2.to_k.weight"))
    proj_in = next(k for k in sd if k.endswith(".proj_in.weight"))
    channels = [model_channels * m for m in mult]
    config = {
        "_class_name": "UNet2DConditionModel",
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": shape(sd, "out.2.weight", what, layout)[0],
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "block_out_channels": channels,
        "layers_per_block": per_level,
        "cross_attention_dim": sd[attn].shape[1],
        "attention_head_dim": (
            SD1_HEADS if head_channels is None else [c // head_channels for c in channels]
        ),
        # diffusers gives the middle block the last level's depth; levels without
        # attention ignore theirs (the SDXL refiner's last level has none, its middle 4).
        "transformer_layers_per_block": [d or mid_depth for d in depths[:-1]] + [mid_depth],
        "use_linear_projection": sd[proj_in].ndim == 2,
    }
    if depths[-1] not in (0, mid_depth):
        raise UserError(f"{what}: the middle block's depth differs from the last level's")
    if "label_emb.0.0.weight" in sd:  # SDXL's vector condition: pooled text + size numbers
        config |= {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": SIZE_EMBEDDING,
            "projection_class_embeddings_input_dim": sd["label_emb.0.0.weight"].shape[1],
        }
    return config


def vae_config(
    sd: dict, scaling_factor: float, layout: str, shift_factor: float | None = None
) -> dict:
    """A diffusers ``AutoencoderKL`` config from an ldm VAE's shapes (keys without the
    ``first_stage_model.`` prefix); SD3's VAE has a shift factor and no quant convs."""
    what = "the VAE"
    levels = indices(sd, "encoder.down.")
    channels = [
        shape(sd, f"encoder.down.{i}.block.0.conv2.weight", what, layout)[0] for i in levels
    ]
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": shape(sd, "encoder.conv_in.weight", what, layout)[1],
        "out_channels": shape(sd, "decoder.conv_out.weight", what, layout)[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": len(indices(sd, "encoder.down.0.block.")),
        "latent_channels": shape(sd, "decoder.conv_in.weight", what, layout)[1],
        "sample_size": 1024,
        "scaling_factor": scaling_factor,
        "shift_factor": shift_factor,
        "use_quant_conv": "quant_conv.weight" in sd,
        "use_post_quant_conv": "post_quant_conv.weight" in sd,
        "force_upcast": True,
    }


# OpenAI's CLIP token ids (eos 2: transformers then pools at the highest token id, CLIP's
# end token), as every CLIP text config here has them.
_CLIP_IDS = {"layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}


HEAD_WIDTH = 64
"""The attention head width of CLIP-L, OpenCLIP bigG, SD3's MMDiT and PanGu-Draw v3's text
towers: the tensor shapes hold the model width, not how it is cut into heads."""


def heads(width: int, what: str) -> int:
    """How many :data:`HEAD_WIDTH`-wide heads a ``width``-wide layer has; a width they do
    not divide is refused (it is not one of the models these files come from)."""
    if width < HEAD_WIDTH or width % HEAD_WIDTH:
        raise UserError(
            f"{what} is {width} wide, which {HEAD_WIDTH}-wide attention heads do not divide: "
            "not a model pangu-draw knows the head width of"
        )
    return width // HEAD_WIDTH


def clip_config(sd: dict, what: str, layout: str) -> dict:
    """A ``CLIPTextConfig`` dict from a Hugging Face CLIP text model's shapes (keys
    starting ``text_model.``); OpenAI's CLIP token ids and activation."""
    p = "text_model."
    vocab, width = shape(sd, p + "embeddings.token_embedding.weight", what, layout)
    config = {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": shape(sd, p + "encoder.layers.0.mlp.fc1.weight", what, layout)[0],
        "num_hidden_layers": len(indices(sd, p + "encoder.layers.")),
        "num_attention_heads": heads(width, what),
        "max_position_embeddings": shape(
            sd, p + "embeddings.position_embedding.weight", what, layout
        )[0],
        "hidden_act": "quick_gelu",
        **_CLIP_IDS,
    }
    if "text_projection.weight" in sd:
        config["projection_dim"] = sd["text_projection.weight"].shape[0]
    return config


def openclip_config(sd: dict, prefix: str, what: str, layout: str) -> dict:
    """A ``CLIPTextConfig`` dict from an OpenCLIP text tower's shapes (keys under
    ``prefix``); 64-wide heads, GELU."""
    vocab, width = shape(sd, prefix + "token_embedding.weight", what, layout)
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": shape(
            sd, prefix + "transformer.resblocks.0.mlp.c_fc.weight", what, layout
        )[0],
        "num_hidden_layers": len(indices(sd, prefix + "transformer.resblocks.")),
        "num_attention_heads": heads(width, what),
        "max_position_embeddings": shape(sd, prefix + "positional_embedding", what, layout)[0],
        "projection_dim": shape(sd, prefix + "text_projection", what, layout)[1],
        "hidden_act": "gelu",
        **_CLIP_IDS,
    }


def check_vector_condition(unet, pooled_dim: int, numbers: int, what: str, model: str) -> None:
    """SDXL's vector condition is the pooled text plus ``numbers`` 256-wide embeddings of
    size numbers (base 6, refiner 5, PanGu-Draw v3 one bucket index): refuse a UNet that
    takes another width."""
    adm = unet.config.projection_class_embeddings_input_dim
    expected = pooled_dim + numbers * SIZE_EMBEDDING
    if adm != expected:
        raise UserError(
            f"{what} takes a {adm}-wide vector condition, not the pooled text ({pooled_dim}) "
            f"plus the {numbers} {SIZE_EMBEDDING}-wide size embedding(s) of {model}"
        )


def numel(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def load_strict(model: torch.nn.Module, state: dict, what: str, layout: str) -> torch.nn.Module:
    """Put ``state`` into a model built on the meta device: every parameter must come
    from the checkpoint with its exact shape."""
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"{what} does not have {layout}'s layout: {detail}") from exc
    # Buffers no checkpoint holds stay on the meta device; CLIP's position ids are the one
    # kind these models have (a model saved and reloaded would rebuild them too).
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if not buffer.is_meta:
                continue
            if name != "position_ids":
                raise RuntimeError(f"{type(module).__name__}.{name} was not loaded")
            ids = torch.arange(buffer.shape[-1]).expand(buffer.shape)
            module.register_buffer(name, ids, persistent=False)
    return model


def check_all_used(source: dict, converted: dict, what: str, layout: str) -> None:
    """Every value of the source part lands in the converted part (a tensor diffusers'
    mapping skipped would be lost silently otherwise)."""
    have, got = numel(source.values()), numel(converted.values())
    if have != got:
        raise UserError(f"{what}: {have - got} of {have} values were not mapped (not {layout})")


def convert_unet(source: dict, what: str, layout: str, head_channels: int | None, sample_size: int):
    """The UNet of ``source`` (keys with the ``model.diffusion_model.`` prefix);
    ``sample_size``: its default latent side (not in the weights)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    plain = {k[len(UNET) :]: v for k, v in source.items()}
    config = unet_config(plain, what, layout, head_channels, sample_size)
    converted = convert_ldm_unet_checkpoint(source, config)
    check_all_used(source, converted, what, layout)
    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(config)
    return load_strict(model, converted, what, layout)


def convert_vae(
    source: dict, scaling_factor: float, layout: str, shift_factor: float | None = None
):
    """The VAE of ``source`` (keys with the ``first_stage_model.`` prefix)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    plain = {k[len(VAE) :]: v for k, v in source.items()}
    config = vae_config(plain, scaling_factor, layout, shift_factor)
    converted = convert_ldm_vae_checkpoint(source, config)
    check_all_used(source, converted, "the VAE", layout)
    with torch.device("meta"):
        model = AutoencoderKL.from_config(config)
    return load_strict(model, converted, "the VAE", layout)


def convert_clip(source: dict, prefix: str, what: str, layout: str, overrides: dict | None = None):
    """A Hugging Face CLIP text model stored under ``prefix`` (``text_model.*`` below it,
    or the older layout without that level), with its projection when it has one;
    ``overrides`` replaces config values the shapes do not give (token ids, activation)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    converted = {k[len(prefix) :]: v for k, v in source.items()}
    if not any(k.startswith(("text_model.", "text_projection.")) for k in converted):
        converted = {"text_model." + k: v for k, v in converted.items()}
    config = CLIPTextConfig(**clip_config(converted, what, layout) | (overrides or {}))
    cls = CLIPTextModelWithProjection if "text_projection.weight" in converted else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        # transformers 5 dropped the ``text_model.`` level of CLIPTextModel
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return load_strict(model, converted, what, layout)


def convert_openclip(source: dict, prefix: str, what: str, layout: str):
    """An OpenCLIP text tower stored under ``prefix``, as ``CLIPTextModelWithProjection``."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(**openclip_config(source, prefix, what, layout))
    converted = convert_open_clip_checkpoint(SimpleNamespace(config=config), source, prefix)
    check_all_used(source, converted, what, layout)
    with torch.device("meta"):
        model = CLIPTextModelWithProjection(config)
    return load_strict(model, converted, what, layout)


def bundled(name: str, sha256: str) -> Path:
    """A data file shipped in the package, checked against its SHA-256."""
    path = DATA / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    if digest != sha256:
        raise UserError(f"{path} is missing or altered (SHA-256 mismatch); reinstall pangu-draw")
    return path


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[str, str]:
    """CLIP's ``vocab.json`` and ``merges.txt`` as text, from the bundled BPE file."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # CLIP's byte table

    lines = gzip.decompress(bundled(*CLIP_BPE).read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _MERGES + 1]]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = json.dumps({t: i for i, t in enumerate(tokens)})
    return vocab, "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"


def clip_tokenizer(pad_token: str):
    """CLIP's tokenizer (77 tokens, start 49406, end 49407) from the bundled BPE, with
    ``pad_token``: ``<|endoftext|>`` as OpenAI's CLIP pads, ``!`` (id 0) as OpenCLIP's."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    with tempfile.TemporaryDirectory(prefix="pangu-draw-bpe-") as tmp:
        (Path(tmp) / "vocab.json").write_text(vocab)
        (Path(tmp) / "merges.txt").write_text(merges)
        return CLIPTokenizer(
            str(Path(tmp) / "vocab.json"),
            str(Path(tmp) / "merges.txt"),
            pad_token=pad_token,
            model_max_length=77,
        )


def sd3_transformer_config(sd: dict, what: str, layout: str) -> dict:
    """A diffusers ``SD3Transformer2DModel`` config from an MMDiT's shapes (keys without
    the ``model.diffusion_model.`` prefix); 64-wide heads, as SD3 and SD3.5."""
    hidden, in_channels, patch, _ = shape(sd, "x_embedder.proj.weight", what, layout)
    context_out, context_in = shape(sd, "context_embedder.weight", what, layout)
    positions = shape(sd, "pos_embed", what, layout)[1]
    side = round(positions**0.5)
    if side * side != positions:
        raise UserError(f"{what}: {positions} position embeddings do not make a square grid")
    layers = indices(sd, "joint_blocks.")
    return {
        "_class_name": "SD3Transformer2DModel",
        "sample_size": 128,
        "patch_size": patch,
        "in_channels": in_channels,
        "num_layers": len(layers),
        "attention_head_dim": 64,
        "num_attention_heads": heads(hidden, what),
        "joint_attention_dim": context_in,
        "caption_projection_dim": context_out,
        "pooled_projection_dim": shape(sd, "y_embedder.mlp.0.weight", what, layout)[1],
        "out_channels": shape(sd, "final_layer.linear.weight", what, layout)[0] // patch**2,
        "pos_embed_max_size": side,
        "dual_attention_layers": tuple(
            i for i in layers if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in sd
        ),
        "qk_norm": "rms_norm" if any(".attn.ln_q." in k for k in sd) else None,
    }


def convert_sd3_transformer(source: dict, what: str, layout: str):
    """The MMDiT of ``source`` (keys with the ``model.diffusion_model.`` prefix)."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import (
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    plain = {k[len(UNET) :]: v for k, v in source.items()}
    config = sd3_transformer_config(plain, what, layout)
    converted = convert_sd3_transformer_checkpoint_to_diffusers(dict(plain))
    check_all_used(source, converted, what, layout)
    with torch.device("meta"):
        model = SD3Transformer2DModel.from_config(config)
    return load_strict(model, converted, what, layout)


def t5_config(sd: dict, what: str, layout: str) -> dict:
    """A ``T5Config`` dict from a T5 encoder's shapes (Hugging Face keys: ``shared.weight``,
    ``encoder.block.N...``): gated GELU as T5 v1.1 (SD3, Flux) when the feed-forward has
    two input matrices; the attention heads from the relative position table."""
    vocab, width = shape(sd, "shared.weight", what, layout)
    block = "encoder.block.0.layer."
    inner = shape(sd, block + "0.SelfAttention.q.weight", what, layout)[0]
    buckets, heads = shape(
        sd, block + "0.SelfAttention.relative_attention_bias.weight", what, layout
    )
    gated = block + "1.DenseReluDense.wi_0.weight" in sd
    wi = block + ("1.DenseReluDense.wi_0.weight" if gated else "1.DenseReluDense.wi.weight")
    return {
        "vocab_size": vocab,
        "d_model": width,
        "d_kv": inner // heads,
        "d_ff": shape(sd, wi, what, layout)[0],
        "num_layers": len(indices(sd, "encoder.block.")),
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "is_encoder_decoder": False,
        "use_cache": False,
    }


def convert_t5(source: dict, prefix: str, what: str, layout: str, umt5: bool = False):
    """A ``T5EncoderModel`` (``umt5``: a ``UMT5EncoderModel``, every layer with its own
    relative position table) stored under ``prefix`` in Hugging Face's layout. The token
    embedding is one tensor shared by ``shared`` and ``encoder.embed_tokens`` (files hold
    it once or twice)."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_class, model_class = (
        (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    )
    state = {k[len(prefix) :]: v for k, v in source.items()}
    config = config_class(**t5_config(state, what, layout))  # refuses one without shared.weight
    shared = state["shared.weight"]
    if not torch.equal(state.setdefault("encoder.embed_tokens.weight", shared), shared):
        raise UserError(f"{what}: shared.weight and encoder.embed_tokens.weight differ")
    state["encoder.embed_tokens.weight"] = shared
    with torch.device("meta"):
        model = model_class(config)
    return load_strict(model, state, what, layout)


def t5_tokenizer():
    """T5 v1.1's tokenizer (``</s>`` appended, ``<pad>`` id 0) from the bundled file."""
    from transformers import T5TokenizerFast

    text = gzip.decompress(bundled(*T5_TOKENIZER).read_bytes())
    with tempfile.TemporaryDirectory(prefix="pangu-draw-t5-") as tmp:
        (Path(tmp) / "tokenizer.json").write_bytes(text)
        return T5TokenizerFast(tokenizer_file=str(Path(tmp) / "tokenizer.json"))


# Flux.1 in Black Forest Labs' layout -> diffusers' FluxTransformer2DModel (the mapping of
# diffusers' convert_flux_transformer_checkpoint_to_diffusers, which fixes the width at
# FLUX.1's 3,072; here the width is read from the shapes, and a test checks that both
# mappings agree at FLUX.1's size).
FLUX_HEAD = 128  # FLUX.1's head width, split 16 + 56 + 56 by its rotary axes
_FLUX_GLOBAL = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
_FLUX_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
}
_FLUX_SINGLE = {
    "modulation.lin": "norm.linear",
    "norm.query_norm": "attn.norm_q",
    "norm.key_norm": "attn.norm_k",
    "linear2": "proj_out",
}
_FLUX_BLOCKS = {
    "double_blocks": (_FLUX_DOUBLE, "transformer_blocks"),
    "single_blocks": (_FLUX_SINGLE, "single_transformer_blocks"),
}
_FLUX_FUSED = {  # fused projections, split along the output rows
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
}


def flux_transformer_config(sd: dict, what: str, layout: str) -> dict:
    """A diffusers ``FluxTransformer2DModel`` config from a Flux.1 transformer's shapes
    (keys without the ``model.diffusion_model.`` prefix): 128-wide heads; the guidance
    embedding when the file has one (dev, not schnell)."""
    hidden, in_channels = shape(sd, "img_in.weight", what, layout)
    if hidden % FLUX_HEAD:
        raise UserError(f"{what} is {hidden} wide, not a multiple of Flux's {FLUX_HEAD}-wide heads")
    return {
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": shape(sd, "final_layer.linear.weight", what, layout)[0],
        "num_layers": len(indices(sd, "double_blocks.")),
        "num_single_layers": len(indices(sd, "single_blocks.")),
        "attention_head_dim": FLUX_HEAD,
        "num_attention_heads": hidden // FLUX_HEAD,
        "joint_attention_dim": shape(sd, "txt_in.weight", what, layout)[1],
        "pooled_projection_dim": shape(sd, "vector_in.in_layer.weight", what, layout)[1],
        "guidance_embeds": "guidance_in.in_layer.weight" in sd,
        "axes_dims_rope": (16, 56, 56),
    }


def flux_transformer_keys(sd: dict, hidden: int) -> dict:
    """Black Forest Labs' names and fused tensors -> diffusers' (keys without the prefix);
    a key no rule knows, or a tensor that does not split as its name says, is left out
    (and then reported as not mapped)."""
    out = {}
    for key, value in sd.items():
        if "." not in key or value.ndim == 0:
            continue
        module, tail = key.rsplit(".", 1)
        tail = "weight" if tail == "scale" else tail  # the RMS norms' scale
        kind, index, rest = (module.split(".", 2) + ["", ""])[:3]
        if kind in _FLUX_BLOCKS and index.isdigit():
            names, new = _FLUX_BLOCKS[kind]
            prefix = f"{new}.{index}."
            if rest in _FLUX_FUSED:
                parts = _FLUX_FUSED[rest]
                sizes = [hidden] * 3 + ([value.shape[0] - 3 * hidden] if len(parts) == 4 else [])
                if min(sizes) <= 0 or sum(sizes) != value.shape[0]:
                    continue
                for name, piece in zip(parts, torch.split(value, sizes)):
                    out[f"{prefix}{name}.{tail}"] = piece
            elif rest in names:
                out[f"{prefix}{names[rest]}.{tail}"] = value
        elif module == "final_layer.adaLN_modulation.1" and value.shape[0] % 2 == 0:
            # (shift, scale) -> (scale, shift)
            shift, scale = value.chunk(2)
            out[f"norm_out.linear.{tail}"] = torch.cat([scale, shift])
        elif module in _FLUX_GLOBAL:
            out[f"{_FLUX_GLOBAL[module]}.{tail}"] = value
    return out


def convert_flux_transformer(source: dict, what: str, layout: str):
    """The Flux.1 transformer of ``source`` (keys with the ``model.diffusion_model.``
    prefix)."""
    from diffusers import FluxTransformer2DModel

    plain = {k[len(UNET) :]: v for k, v in source.items()}
    config = flux_transformer_config(plain, what, layout)
    hidden = config["num_attention_heads"] * FLUX_HEAD
    converted = flux_transformer_keys(plain, hidden)
    check_all_used(source, converted, what, layout)
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(config)
    return load_strict(model, converted, what, layout)
