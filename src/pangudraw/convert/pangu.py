"""PanGu-Draw v3's MindSpore checkpoints as two diffusers folders (structure and texture).

The release (mindone ``examples/pangu_draw_v3``) has two checkpoints in the sgm
(generative-models) key layout with MindSpore's parameter names:

- ``pangu_high_timestamp-*.ckpt``: the structure UNet (t >= 500), ``model.diffusion_model.*``;
- ``pangu_low_timestamp-*.ckpt``: the texture UNet, the VAE (``first_stage_model.*``), a
  Chinese CLIP text model in Hugging Face's CLIP layout (``conditioner.embedders.0.
  transformer.*``, BERT-Chinese token ids) and OpenCLIP ViT-bigG-14's text tower
  (``conditioner.embedders.1.model.*``).

Conversion: MindSpore names back to PyTorch's (``gamma``/``beta`` are a norm's
``weight``/``bias``, ``embedding_table`` an embedding's ``weight``), then diffusers' own
single-file conversion of the SDXL-shaped UNet, the VAE and the OpenCLIP text tower. The
architecture is read from the tensor shapes; the one thing the shapes do not hold, the
attention head width, is the release's 64. Every tensor must land somewhere: a tensor the
mapping does not use is an error unless the caller allows it.

Output: ``DIR/texture`` (every component) and ``DIR/structure`` (its own UNet; the VAE,
text encoders and tokenizers hard-linked from ``texture`` where the file system allows,
copied otherwise). Both are written under a hidden temporary name and renamed at the end,
so an interrupted conversion leaves no half folder behind.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import UserError
from ..train.export import drop_loading_paths
from .mindspore import read_checkpoint

UNET = "model.diffusion_model."
VAE = "first_stage_model."
ZH_CLIP = "conditioner.embedders.0.transformer."
BIGG = "conditioner.embedders.1.model."
# Bookkeeping a training run saves beside the weights, and buffers derived from the weights
# or the architecture: read and dropped.
IGNORED = {"global_step", "epoch_num", "step_num", "current_iterator_step", "learning_rate"}
IGNORED_TAILS = ("attn_mask", "logit_scale", "position_ids")
HEAD_CHANNELS = 64  # the release's num_head_channels (not in the tensor shapes)
VAE_SCALE = 0.13025  # the release config's scale_factor
SIZE_EMBEDDING = 256  # ConcatTimestepEmbedderND(outdim=256) of the target-size bucket index
# The release's --high_solution sizes (width, height); the bucket index conditions the UNet.
HIGH_RESOLUTION_SIZES = [
    (512, 2048),
    (512, 1920),
    (768, 1536),
    (864, 1536),
    (960, 1280),
    (1024, 1024),
    (1280, 960),
    (1536, 768),
    (1920, 512),
    (2048, 512),
]
DATA = Path(__file__).parent / "data"
ZH_VOCAB = (
    "bert_chinese_vocab.txt",
    "45bbac6b341c319adc98a532532882e91a9cefc0329aa57bac9ae761c27b291c",
)
CLIP_BPE = (
    "bpe_simple_vocab_16e6.txt.gz",
    "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
)
SCHEDULER = {
    # sgm's LegacyDDPMDiscretization + EDM Euler, as diffusers' Euler: the same sigmas at
    # the same integer timesteps (trailing spacing: 999, 974, ..., 24 for 40 steps).
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 0,
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def torch_name(name: str) -> str:
    """A MindSpore parameter name in PyTorch's words."""
    for ms, pt in ((".gamma", ".weight"), (".beta", ".bias"), (".embedding_table", ".weight")):
        if name.endswith(ms):
            return name[: -len(ms)] + pt
    return name


@dataclass
class Source:
    """The tensors of one checkpoint (PyTorch names) and what was dropped on reading."""

    path: Path
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.tensors.items() if k.startswith(prefix)}


def read_source(path: Path, dtype: torch.dtype | None, progress: Callable[[int], None]) -> Source:
    source = Source(Path(path))
    for tensor in read_checkpoint(path):
        progress(tensor.data.nbytes)
        name = torch_name(tensor.name)
        if name in IGNORED or name.rsplit(".", 1)[-1] in IGNORED_TAILS:
            source.ignored.append(tensor.name)
            continue
        value = tensor.to_torch()
        if value.is_floating_point() and dtype is not None:
            value = value.to(dtype)
        source.tensors[name] = value
    return source


def _shape(sd: dict, key: str, what: str) -> torch.Size:
    if key not in sd:
        raise UserError(f"{what} has no {key}: it is not a PanGu-Draw v3 checkpoint")
    return sd[key].shape


def _indices(sd: dict, prefix: str) -> list[int]:
    """Sorted distinct integers that follow ``prefix`` in the keys."""
    found = set()
    for key in sd:
        if key.startswith(prefix):
            head = key[len(prefix) :].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def unet_config(sd: dict, pooled_dim: int, what: str) -> dict:
    """A diffusers UNet2DConditionModel config from an sgm-layout UNet's shapes (keys
    without the ``model.diffusion_model.`` prefix)."""
    first = _shape(sd, "input_blocks.0.0.weight", what)
    model_channels, in_channels = first[0], first[1]
    downsamples = [
        i for i in _indices(sd, "input_blocks.") if f"input_blocks.{i}.0.op.weight" in sd
    ]
    if not downsamples:
        raise UserError(f"{what} has no downsampling blocks: it is not an SDXL-shaped UNet")
    per_level = downsamples[0] - 1  # resnets per level
    levels = len(downsamples) + 1
    mult, depths = [], []
    for level in range(levels):
        block = 1 + level * (per_level + 1)
        out = _shape(sd, f"input_blocks.{block}.0.in_layers.2.weight", what)[0]
        mult.append(out // model_channels)
        depths.append(len(_indices(sd, f"input_blocks.{block}.1.transformer_blocks.")))
    if not any(depths):
        raise UserError(f"{what} has no attention blocks: it is not an SDXL-shaped UNet")
    attn = next(k for k in sd if k.endswith("attn2.to_k.weight"))
    adm = _shape(sd, "label_emb.0.0.weight", what)[1]
    if adm - pooled_dim != SIZE_EMBEDDING:
        raise UserError(
            f"{what} takes a {adm}-wide vector condition, not the pooled text ({pooled_dim}) "
            f"plus the {SIZE_EMBEDDING}-wide size bucket of PanGu-Draw v3"
        )
    channels = [model_channels * m for m in mult]
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 128,
        "in_channels": in_channels,
        "out_channels": _shape(sd, "out.2.weight", what)[0],
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "block_out_channels": channels,
        "layers_per_block": per_level,
        "cross_attention_dim": sd[attn].shape[1],
        "attention_head_dim": [c // HEAD_CHANNELS for c in channels],
        "transformer_layers_per_block": [max(d, 1) for d in depths],
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": SIZE_EMBEDDING,
        "projection_class_embeddings_input_dim": adm,
    }


def vae_config(sd: dict) -> dict:
    """A diffusers AutoencoderKL config from an sgm-layout VAE's shapes (keys without the
    ``first_stage_model.`` prefix)."""
    what = "the VAE"
    levels = _indices(sd, "encoder.down.")
    channels = [_shape(sd, f"encoder.down.{i}.block.0.conv2.weight", what)[0] for i in levels]
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": _shape(sd, "encoder.conv_in.weight", what)[1],
        "out_channels": _shape(sd, "decoder.conv_out.weight", what)[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": len(_indices(sd, "encoder.down.0.block.")),
        "latent_channels": _shape(sd, "decoder.conv_in.weight", what)[1],
        "sample_size": 1024,
        "scaling_factor": VAE_SCALE,
        "force_upcast": True,
    }


def zh_clip_config(sd: dict) -> dict:
    what = "the Chinese CLIP text model"
    p = "text_model."
    vocab, width = _shape(sd, p + "embeddings.token_embedding.weight", what)
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": _shape(sd, p + "encoder.layers.0.mlp.fc1.weight", what)[0],
        "num_hidden_layers": len(_indices(sd, p + "encoder.layers.")),
        "num_attention_heads": width // HEAD_CHANNELS,
        "max_position_embeddings": _shape(sd, p + "embeddings.position_embedding.weight", what)[0],
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        # BERT-Chinese ids: [PAD] 0, [CLS] 101, [SEP] 102 (only the hidden states are used)
        "pad_token_id": 0,
        "bos_token_id": 101,
        "eos_token_id": 102,
    }


def bigg_config(sd: dict) -> dict:
    what = "the OpenCLIP text model"
    vocab, width = _shape(sd, BIGG + "token_embedding.weight", what)
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": _shape(sd, BIGG + "transformer.resblocks.0.mlp.c_fc.weight", what)[0],
        "num_hidden_layers": len(_indices(sd, BIGG + "transformer.resblocks.")),
        "num_attention_heads": width // HEAD_CHANNELS,
        "max_position_embeddings": _shape(sd, BIGG + "positional_embedding", what)[0],
        "projection_dim": _shape(sd, BIGG + "text_projection", what)[1],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        # eos 2: transformers then pools at the highest token id, OpenCLIP's end token
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }


def _numel(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def _load_strict(model: torch.nn.Module, state: dict, what: str) -> torch.nn.Module:
    """Put ``state`` into a model built on the meta device: every parameter must come
    from the checkpoint with its exact shape."""
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"{what} does not have PanGu-Draw v3's layout: {detail}") from exc
    return model


def _check_all_used(source: dict, converted: dict, what: str) -> None:
    """Every value of the source part lands in the converted part (a tensor diffusers'
    mapping skipped would be lost silently otherwise)."""
    have, got = _numel(source.values()), _numel(converted.values())
    if have != got:
        raise UserError(
            f"{what}: {have - got} of {have} values were not mapped (not PanGu-Draw v3's layout)"
        )


def convert_unet(source: dict, pooled_dim: int, what: str):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    plain = {k[len(UNET) :]: v for k, v in source.items()}
    config = unet_config(plain, pooled_dim, what)
    converted = convert_ldm_unet_checkpoint(source, config)
    _check_all_used(source, converted, what)
    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(config)
    return _load_strict(model, converted, what)


def convert_vae(source: dict):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = vae_config({k[len(VAE) :]: v for k, v in source.items()})
    converted = convert_ldm_vae_checkpoint(source, config)
    _check_all_used(source, converted, "the VAE")
    with torch.device("meta"):
        model = AutoencoderKL.from_config(config)
    return _load_strict(model, converted, "the VAE")


def convert_zh_clip(source: dict):
    from transformers import CLIPTextConfig, CLIPTextModel

    converted = {k[len(ZH_CLIP) :]: v for k, v in source.items()}
    config = CLIPTextConfig(**zh_clip_config(converted))
    with torch.device("meta"):
        model = CLIPTextModel(config)
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        # transformers 5 dropped the ``text_model.`` level of CLIPTextModel
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return _load_strict(model, converted, "the Chinese CLIP text model")


def convert_bigg(source: dict):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(**bigg_config(source))
    converted = convert_open_clip_checkpoint(SimpleNamespace(config=config), source, BIGG)
    _check_all_used(source, converted, "the OpenCLIP text model")
    with torch.device("meta"):
        model = CLIPTextModelWithProjection(config)
    return _load_strict(model, converted, "the OpenCLIP text model")


def _bundled(name: str, sha256: str) -> Path:
    path = DATA / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    if digest != sha256:
        raise UserError(f"{path} is missing or altered (SHA-256 mismatch); reinstall pangu-draw")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte-to-character table (the BPE works on these characters)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizers(folder: Path) -> None:
    """``tokenizer`` (BERT-Chinese WordPiece, 77 tokens) and ``tokenizer_2`` (CLIP BPE as
    OpenCLIP tokenizes: start 49406, end 49407, padding 0) into a model folder."""
    from transformers import BertTokenizer, CLIPTokenizer

    vocab = _bundled(*ZH_VOCAB)
    BertTokenizer(str(vocab), do_lower_case=True, model_max_length=77).save_pretrained(
        folder / "tokenizer"
    )
    lines = gzip.decompress(_bundled(*CLIP_BPE).read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    staging = folder / ".bpe"
    staging.mkdir()
    (staging / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (staging / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    )
    tokenizer = CLIPTokenizer(
        str(staging / "vocab.json"), str(staging / "merges.txt"), pad_token="!", model_max_length=77
    )
    tokenizer.save_pretrained(folder / "tokenizer_2")
    shutil.rmtree(staging)


def model_index(role: str, buckets: list[tuple[int, int]]) -> dict:
    from diffusers import __version__

    return {
        "_class_name": "PanGuDrawV3Pipeline",  # not a diffusers pipeline: see pangudraw.pangu
        "_diffusers_version": __version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "BertTokenizer"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "force_zeros_for_empty_prompt": False,
        "pangu_draw_v3": {"role": role, "size_buckets": [list(b) for b in buckets]},
    }


def _link_or_copy(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


@dataclass
class Report:
    """What a conversion did: output folders, tensors read, tensors dropped on purpose,
    tensors no mapping used (allowed only with ``allow_unmapped``)."""

    output: Path
    tensors: int
    ignored: list[str]
    unmapped: list[str]


def _parts(source: Source, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(k for k in source.tensors if not k.startswith(prefixes))


def convert_pangu_v3(
    high: str | Path,
    low: str | Path,
    output: str | Path,
    *,
    allow_unmapped: bool = False,
    dtype: torch.dtype | None = None,
    buckets: list[tuple[int, int]] = HIGH_RESOLUTION_SIZES,
    progress: Callable[[int], None] = lambda n: None,
) -> Report:
    """Convert the release's two checkpoints into ``output/structure`` and
    ``output/texture``. ``dtype`` None keeps each tensor's stored type; ``progress``
    receives the bytes of each tensor read."""
    output = Path(output)
    if output.exists():
        raise UserError(f"{output} exists; give a new folder for the converted models")
    for path in (high, low):
        if not Path(path).is_file():
            raise UserError(f"checkpoint {path} does not exist")
    _bundled(*ZH_VOCAB), _bundled(*CLIP_BPE)  # before hours of reading, not after
    low_source = read_source(Path(low), dtype, progress)
    high_source = read_source(Path(high), dtype, progress)
    known_low = (UNET, VAE, ZH_CLIP, BIGG)
    unmapped = [f"{low}: {k}" for k in _parts(low_source, known_low)]
    unmapped += [f"{high}: {k}" for k in _parts(high_source, (UNET,))]
    parts = {
        UNET: "UNet",
        VAE: "VAE",
        ZH_CLIP: "Chinese CLIP text model",
        BIGG: "OpenCLIP text model",
    }
    for prefix, what in parts.items():
        if not low_source.part(prefix):
            raise UserError(
                f"{low} has no {what} ({prefix}*): it is not PanGu-Draw v3's low-timestep "
                "checkpoint (that one holds the UNet, the VAE and both text encoders)"
            )
    if not high_source.part(UNET):
        raise UserError(
            f"{high} has no UNet ({UNET}*): it is not PanGu-Draw v3's high-timestep checkpoint"
        )
    if unmapped and not allow_unmapped:
        shown = ", ".join(unmapped[:3]) + (
            f" and {len(unmapped) - 3} more" if len(unmapped) > 3 else ""
        )
        raise UserError(
            f"tensors the conversion does not map: {shown}; pass --allow-unmapped to drop them"
        )

    bigg = convert_bigg(low_source.part(BIGG))
    pooled = bigg.config.projection_dim
    zh = convert_zh_clip(low_source.part(ZH_CLIP))
    context = zh.config.hidden_size + bigg.config.hidden_size
    texture_unet = convert_unet(low_source.part(UNET), pooled, f"{low}'s UNet")
    structure_unet = convert_unet(high_source.part(UNET), pooled, f"{high}'s UNet")
    for unet, path in ((texture_unet, low), (structure_unet, high)):
        if unet.config.cross_attention_dim != context:
            raise UserError(
                f"{path}'s UNet attends to {unet.config.cross_attention_dim}-wide text, not the "
                f"{context} the two text encoders give: the checkpoints do not belong together"
            )
    vae = convert_vae(low_source.part(VAE))

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        texture = staging / "texture"
        texture_unet.save_pretrained(texture / "unet")
        vae.save_pretrained(texture / "vae")
        zh.save_pretrained(texture / "text_encoder")
        bigg.save_pretrained(texture / "text_encoder_2")
        write_tokenizers(texture)
        structure = staging / "structure"
        structure_unet.save_pretrained(structure / "unet")
        for name in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            _link_or_copy(texture / name, structure / name)
        for folder, role in ((texture, "texture"), (structure, "structure")):
            (folder / "scheduler").mkdir()
            (folder / "scheduler" / "scheduler_config.json").write_text(
                json.dumps(SCHEDULER, indent=2) + "\n"
            )
            (folder / "model_index.json").write_text(
                json.dumps(model_index(role, buckets), indent=2) + "\n"
            )
            drop_loading_paths(folder)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Report(
        output,
        len(low_source.tensors) + len(high_source.tensors),
        low_source.ignored + high_source.ignored,
        unmapped,
    )
