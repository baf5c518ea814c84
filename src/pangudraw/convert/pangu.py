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

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import original
from ..errors import UserError
from ..files import drop_loading_paths
from ..original import UNET, VAE
from .mindspore import read_checkpoint

ZH_CLIP = "conditioner.embedders.0.transformer."
BIGG = "conditioner.embedders.1.model."
# Bookkeeping a training run saves beside the weights, and buffers derived from the weights
# or the architecture: read and dropped.
IGNORED = {"global_step", "epoch_num", "step_num", "current_iterator_step", "learning_rate"}
IGNORED_TAILS = ("attn_mask", "logit_scale", "position_ids")
HEAD_CHANNELS = 64  # the release's num_head_channels (not in the tensor shapes)
VAE_SCALE = 0.13025  # the release config's scale_factor
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
ZH_VOCAB = (
    "bert_chinese_vocab.txt",
    "45bbac6b341c319adc98a532532882e91a9cefc0329aa57bac9ae761c27b291c",
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


LAYOUT = "PanGu-Draw v3's"


def convert_unet(source: dict, pooled_dim: int, what: str):
    unet = original.convert_unet(source, what, "an SDXL-shaped UNet", HEAD_CHANNELS, 128)
    original.check_vector_condition(unet, pooled_dim, 1, what, "PanGu-Draw v3 (its size bucket)")
    return unet


def convert_vae(source: dict):
    return original.convert_vae(source, VAE_SCALE, LAYOUT)


def convert_zh_clip(source: dict):
    # BERT-Chinese ids: [PAD] 0, [CLS] 101, [SEP] 102 (only the hidden states are used)
    ids = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}
    return original.convert_clip(source, ZH_CLIP, "the Chinese CLIP text model", LAYOUT, ids)


def convert_bigg(source: dict):
    return original.convert_openclip(source, BIGG, "the OpenCLIP text model", LAYOUT)


def write_tokenizers(folder: Path) -> None:
    """``tokenizer`` (BERT-Chinese WordPiece, 77 tokens) and ``tokenizer_2`` (CLIP BPE as
    OpenCLIP tokenizes: start 49406, end 49407, padding 0) into a model folder."""
    from transformers import BertTokenizer

    vocab = original.bundled(*ZH_VOCAB)
    BertTokenizer(str(vocab), do_lower_case=True, model_max_length=77).save_pretrained(
        folder / "tokenizer"
    )
    original.clip_tokenizer(pad_token="!").save_pretrained(folder / "tokenizer_2")


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
    (
        original.bundled(*ZH_VOCAB),
        original.bundled(*original.CLIP_BPE),
    )  # before hours of reading, not after
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
