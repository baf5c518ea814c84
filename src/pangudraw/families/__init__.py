"""The model families pangu-draw knows, one module each, and the registry that tells them
apart (``families/base.py`` says what a family module answers).

Recognition reads only configuration: a diffusers folder's ``model_index.json`` and its
components' ``config.json``, a ``.safetensors`` file's JSON header, a model spec's
``[model]`` table. It imports no torch, so a request's defaults are filled in and checked
before anything loads. Anything unreadable is "not recognised"; the loader then says
what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import emoji, flux, flux2, hunyuan_image, pangu, qwen_image, sd, sd3, sdxl, wan, zimage
from .base import Conditioning, Family

FAMILIES: tuple[Family, ...] = (
    emoji.FAMILY,  # before sd: the same UNet, the bundled text encoder
    pangu.FAMILY,  # before sdxl: an SDXL-shaped UNet with its own text stack
    flux.FAMILY,
    sd3.FAMILY,
    wan.FAMILY,
    zimage.FAMILY,
    qwen_image.FAMILY,
    flux2.FAMILY,
    hunyuan_image.REFINER,  # before the base: the same transformer, its own VAE
    hunyuan_image.FAMILY,
    sdxl.FAMILY,
    sd.FAMILY,
)
"""In the order they are tried: the first that recognises a folder is its family."""

BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}

__all__ = [
    "BY_NAME",
    "FAMILIES",
    "Conditioning",
    "Family",
    "family_of_component",
    "family_of_file",
    "family_of_folder",
    "model_defaults",
]


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def folder_reader(folder: Path):
    """``(index, config)`` for a diffusers folder: its ``model_index.json`` and a reader of
    its components' ``config.json`` (the scheduler's ``scheduler_config.json``; ``{}`` for
    any that is missing or unreadable)."""

    def config(name: str) -> dict:
        prefix = {"scheduler": "scheduler_", "guider": "guider_", "ocr_guider": "guider_"}
        return _json(folder / name / f"{prefix.get(name, '')}config.json")

    return _json(folder / "model_index.json"), config


def family_of_folder(folder: str | Path) -> Family | None:
    """The family of a diffusers folder, None if no family recognises it."""
    index, config = folder_reader(Path(folder))
    return family_of_index(index, config) if index else None


def family_of_index(index: dict, config) -> Family | None:
    """The family a ``model_index.json`` (and its components' configs) describes."""
    return next((f for f in FAMILIES if f.recognise(index, config)), None)


def family_of_file(path: str | Path) -> Family | None:
    """The family of a whole ``.safetensors`` single file, read from its header; None for
    anything else (component files, LoRAs, unreadable files)."""
    from ..files import safetensors_keys

    keys = safetensors_keys(Path(path))
    return next((f for f in FAMILIES if f.recognise_file(keys)), None) if keys else None


def family_of_component(path: str | Path) -> Family | None:
    """The family whose diffusion model a ``.safetensors`` file is, as ComfyUI publishes it
    apart from its text encoder and VAE (from the header); None for anything else."""
    from ..files import safetensors_keys

    path = Path(path)
    keys = safetensors_keys(path) if path.suffix.lower() == ".safetensors" else None
    return next((f for f in FAMILIES if f.recognise_component(keys)), None) if keys else None


def model_defaults(model: str | Path) -> dict:
    """The sampling settings a model's own pipeline uses where they differ from
    pangu-draw's (steps, guidance, size, ...), for a folder, single file or model spec;
    ``{}`` for anything else or anything unreadable. No torch."""
    path = Path(model)
    if path.is_dir():
        index, config = folder_reader(path)
        family = family_of_index(index, config) if index else None
        return family.defaults(index, config) if family else {}
    if path.suffix.lower() == ".toml":
        table = _spec_table(path)
        denoiser = _denoiser(table)
        if denoiser is None or denoiser.lower().endswith(".toml"):
            return {}  # (a spec naming a spec is refused when it loads)
        family = family_of_component(path.parent / denoiser)
        if family is not None:  # split files: the spec stands for the folder's index
            return family.defaults(*_spec_reader(path, table))
        return model_defaults(path.parent / denoiser)
    from ..files import safetensors_keys

    keys = safetensors_keys(path) if path.suffix.lower() == ".safetensors" else None
    variant = flux.file_variant(keys) if keys else None
    return flux.DEFAULTS[variant] if variant else {}


def _spec_reader(path: Path, model: dict):
    """``(index, config)`` as a folder would give them, for a split-file model spec's
    ``[model]`` table: its pair and boundary, and the scheduler config it names."""
    index = {}
    if isinstance(model.get("denoiser_2"), str):
        index["transformer_2"] = ["diffusers", "split"]
        index["boundary_ratio"] = model.get("boundary_ratio")
    scheduler = model.get("scheduler")
    scheduler = _json(path.parent / scheduler) if isinstance(scheduler, str) else {}
    return index, lambda name: scheduler if name == "scheduler" else {}


def _spec_table(path: Path) -> dict | None:
    """A model spec's ``[model]`` table; None if ``path`` is not a readable spec."""
    from ..errors import UserError
    from ..tomlconf import read_toml

    try:
        model = read_toml(path, "model spec").get("model")
    except UserError:
        return None
    return model if isinstance(model, dict) else None


def _denoiser(model: dict | None) -> str | None:
    denoiser = model.get("denoiser") if model else None
    return denoiser if isinstance(denoiser, str) else None


def spec_denoiser(path: Path) -> str | None:
    """The denoiser file a model spec (a ``.toml`` file's ``[model]`` table) names; None
    if ``path`` is not a readable spec."""
    return _denoiser(_spec_table(path))
