"""Components of a diffusers folder: the classes its ``model_index.json`` may name, loading
one (safetensors only unless the user opts in to pickle), and the cache that loads the
same files on disk once per process (a converted PanGu-Draw v3 pair shares its VAE and
text encoders through hard links; every bundled model shares MiniLM and a VAE).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from ..errors import UserError

_TEXT_ENCODERS = {
    ("transformers", "CLIPTextModel"),
    ("transformers", "CLIPTextModelWithProjection"),
}
_TOKENIZERS = {("transformers", "CLIPTokenizer"), ("transformers", "CLIPTokenizerFast")}
_BERT_TOKENIZERS = {("transformers", "BertTokenizer"), ("transformers", "BertTokenizerFast")}
_T5 = {("transformers", "T5EncoderModel")}
_T5_TOKENIZERS = {("transformers", "T5TokenizerFast"), ("transformers", "T5Tokenizer")}
_WAN = {("diffusers", "WanTransformer3DModel")}
_QWEN_TOKENIZERS = {("transformers", "Qwen2Tokenizer"), ("transformers", "Qwen2TokenizerFast")}
_GUIDERS = {("diffusers", "AdaptiveProjectedMixGuidance")}
# FLUX.2 [dev] names Mistral's PixtralProcessor as its tokenizer; its text side (the
# tokenizer and chat template in that folder) is what the pipeline uses, and loading it
# needs no image library.
_PROCESSORS = {("transformers", "PixtralProcessor")}
COMPONENTS: dict[str, set[tuple[str, str]]] = {
    "unet": {("diffusers", "UNet2DConditionModel")},
    "transformer": {
        ("diffusers", "FluxTransformer2DModel"),
        ("diffusers", "SD3Transformer2DModel"),
    }
    | _WAN
    | {
        ("diffusers", "ZImageTransformer2DModel"),
        ("diffusers", "QwenImageTransformer2DModel"),
        ("diffusers", "Flux2Transformer2DModel"),
        ("diffusers", "HunyuanImageTransformer2DModel"),
    },
    "transformer_2": _WAN,  # Wan2.2's low-noise expert
    "vae": {
        ("diffusers", "AutoencoderKL"),
        ("diffusers", "AutoencoderKLWan"),
        ("diffusers", "AutoencoderKLQwenImage"),
        ("diffusers", "AutoencoderKLFlux2"),
        ("diffusers", "AutoencoderKLHunyuanImage"),
        ("diffusers", "AutoencoderKLHunyuanImageRefiner"),
    },
    "text_encoder": _TEXT_ENCODERS
    | {
        ("transformers", "UMT5EncoderModel"),
        ("transformers", "Qwen3Model"),
        ("transformers", "Qwen3ForCausalLM"),
        ("transformers", "Qwen2_5_VLForConditionalGeneration"),
        ("transformers", "Mistral3ForConditionalGeneration"),
    },
    "text_encoder_2": _TEXT_ENCODERS | _T5,
    # BERT: PanGu-Draw v3's Chinese CLIP; T5: Wan's UMT5; Qwen2: Z-Image's Qwen3
    "tokenizer": _TOKENIZERS | _BERT_TOKENIZERS | _T5_TOKENIZERS | _QWEN_TOKENIZERS | _PROCESSORS,
    "tokenizer_2": _TOKENIZERS | _T5_TOKENIZERS | {("transformers", "ByT5Tokenizer")},
    # HunyuanImage's guiders: configuration only, no weights
    "guider": _GUIDERS,
    "ocr_guider": _GUIDERS,
    "text_encoder_3": _T5,
    "tokenizer_3": _T5_TOKENIZERS,
}
"""The classes a model folder's ``model_index.json`` may name for the components we load.

A model folder is untrusted input: its index is checked against this list before anything
is imported, so it can neither import an arbitrary module nor pick a loader that ignores
the safetensors-only rule.
"""


def component_class(index_file: Path, name: str, spec) -> type:
    """The allow-listed class that ``model_index.json`` names for component ``name``."""
    allowed = COMPONENTS.get(name, set())
    entry = tuple(spec) if isinstance(spec, list) else None
    if entry not in allowed:
        shown = ".".join(map(str, spec)) if isinstance(spec, list) else repr(spec)
        known = ", ".join(sorted(".".join(a) for a in allowed)) or "nothing"
        raise UserError(f"{index_file}: {name} is {shown}; pangu-draw loads only {known} there")
    library, class_name = entry
    if entry in _PROCESSORS:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast
    return getattr(importlib.import_module(library), class_name)


def bundled_vae(name: str) -> AutoencoderKL:
    """The bundled VAE ``name`` (the zoo's generators share their space's VAE instead of
    each carrying a copy)."""
    from .. import zoo

    folder = zoo.folder(name)
    if not (folder / "config.json").is_file():
        raise UserError(f"bundled model {name} is not a VAE")
    return AutoencoderKL.from_pretrained(folder, use_safetensors=True, torch_dtype=torch.float32)


def files_key(folder: Path, cls: type) -> tuple | None:
    """What identifies a component's files on disk: the same files (hard links included,
    as a converted PanGu-Draw v3 pair has) give the same key."""
    try:
        stats = [(f.name, f.stat()) for f in sorted(folder.iterdir()) if f.is_file()]
    except OSError:
        return None
    return (cls.__name__,) + tuple(
        (name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats
    )


def from_pretrained(cls: type, folder: Path, allow_pickle: bool):
    """A diffusers or transformers component saved in ``folder``."""
    # None: safetensors when present, pickle allowed as a fallback. Weights stored in
    # float16 (the zoo's) are computed in float32 here.
    if "Guidance" in cls.__name__:  # a guider: its settings only
        from ..files import read_json

        return cls.from_config(read_json(folder / cls.config_name, f"{folder.name} config"))
    kwargs = {}
    if "Tokenizer" not in cls.__name__:
        kwargs = {"use_safetensors": None if allow_pickle else True, "torch_dtype": torch.float32}
        # Checked first: diffusers logs its own error line before raising.
        if not allow_pickle and not any(folder.glob("*.safetensors")):
            raise UserError(
                f"{folder} has no safetensors weights; pickle checkpoints are refused "
                "unless you pass --allow-pickle"
            )
    if kwargs and not allow_pickle:
        _check_config_fits_weights(cls, folder)
    # Tokenizer files are someone else's data, and the Rust tokenizers library raises plain
    # Exceptions on a broken one.
    failures = Exception if "Tokenizer" in cls.__name__ else (OSError, ValueError)
    try:
        return cls.from_pretrained(folder, **kwargs)
    except failures as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot load {folder}: {detail}") from exc


def _check_config_fits_weights(cls: type, folder: Path) -> None:
    """Refuse a component whose ``config.json`` describes more parameters than its weights
    hold (a config of another model, or a hostile one): the loader would fill the rest
    with fresh random values, and a config of a 24B-parameter model beside a small file
    allocates all 24B. Counted on the meta device, before anything is allocated."""
    from ..files import safetensors_numel

    held = [safetensors_numel(f) for f in folder.glob("*.safetensors")]
    if not held or None in held:
        return  # (an unreadable file is the loader's to refuse)
    try:
        with torch.device("meta"):
            if hasattr(cls, "config_class"):  # transformers
                config = cls.config_class.from_pretrained(folder)
                model = cls._from_config(config)
            else:  # diffusers
                model = cls.from_config(cls.load_config(folder))
    except Exception as exc:  # a config its class cannot build from: someone else's data
        raise UserError(f"cannot load {folder}: {str(exc).splitlines()[0][:200]}") from exc
    wanted = sum(p.numel() for p in model.parameters())
    if wanted > 1.01 * sum(held) + 1024:
        raise UserError(
            f"{folder}: its config describes a {cls.__name__} of {wanted:,} values and its "
            f"weights hold {sum(held):,}: the config is not these weights'"
        )


def shared(cache: dict | None, key, build: Callable):
    """``build(key)``, once per ``cache`` (every time without one)."""
    if cache is None:
        return build(key)
    if key not in cache:
        cache[key] = build(key)
    return cache[key]
