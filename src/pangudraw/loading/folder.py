"""Diffusers model folders (``save_pretrained`` layout) as experts, and assembling an expert
from its loaded parts (which single files and model specs do too).

A model folder is untrusted input: its ``model_index.json`` may only name the classes of
the allow-list (:data:`.components.COMPONENTS`), its weights load from safetensors unless
the user opts in to pickle, and its scheduler config is checked before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from ..errors import UserError
from ..expert import Expert
from ..families import Family, family_of_index
from ..files import read_json
from ..latents import LatentSpace
from ..noise import Schedule
from .components import bundled_vae, component_class, files_key, from_pretrained, shared
from .schedulers import read_scheduler_config


def load_folder(folder: Path, allow_pickle: bool = False, cache: dict | None = None) -> Expert:
    """An expert from a diffusers pipeline folder of a known family. ``cache`` (a dict the
    caller keeps) makes components that are the same files on disk load once."""
    from .. import zoo

    index_file = folder / "model_index.json"
    if not folder.is_dir() or not index_file.is_file():
        raise UserError(
            f"{folder} is not a diffusers model folder (no model_index.json); "
            "save one with pipeline.save_pretrained()"
        )
    index = read_json(index_file, "model index")

    loaded: dict = {}  # each component once, however many experts the folder holds

    def component(name: str):
        spec = index.get(name)
        if not spec or spec[0] is None:
            return None
        if name not in loaded:
            cls = component_class(index_file, name, spec)
            key = None if cache is None else files_key(folder / name, cls)
            build = lambda _: from_pretrained(cls, folder / name, allow_pickle)  # noqa: E731
            loaded[name] = shared(None if key is None else cache, key, build)
        return loaded[name]

    denoiser = "transformer" if "transformer" in index else "unet"
    for required in (denoiser, "scheduler", "tokenizer" if "tokenizer" in index else "tokenizer_2"):
        if required not in index:
            raise UserError(
                f"{folder} has no {required}; only text-to-image UNet, SD3 and Flux models load"
            )
    network = component(denoiser)
    try:
        bundled = zoo.referenced(index.get("vae"))
    except UserError as exc:
        raise UserError(f"{index_file}: vae {exc}") from exc
    vae = component("vae") if bundled is None else shared(cache, bundled, bundled_vae)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_file.is_file():
        raise UserError(f"{folder} has no scheduler/scheduler_config.json")
    scheduler = read_scheduler_config(scheduler_file)
    config = lambda name: dict(network.config) if name == denoiser else {}  # noqa: E731
    family = family_of_index(index, config)
    if family is None:
        raise UserError(f"{folder}: no model family pangu-draw knows has this layout")
    expert = assemble(str(folder), family, index, component, network, vae, scheduler, cache)
    if index.get("transformer_2") and index["transformer_2"][0] is not None:
        second = component("transformer_2")
        pair_up(expert, index_file, index, component, second, scheduler, cache)
    return expert


def pair_up(expert: Expert, where, index: dict, component, second, scheduler, cache=None):
    """A pair on its own (Wan2.2): ``second`` (the low-noise expert) takes over from
    ``expert`` at the boundary ``index`` gives (its ``boundary_ratio``)."""
    from ..families.wan import boundary_timestep

    expert.boundary = boundary_timestep(index, scheduler[0])
    if expert.boundary is None:
        raise UserError(
            f"{where}: transformer_2 needs a boundary_ratio between 0 and 1 (where the "
            "low-noise expert takes over)"
        )
    expert.low_noise = assemble(
        f"{expert.name}#transformer_2", expert.family, index, component, second,
        expert.space.vae, scheduler, cache,
    )  # fmt: skip
    expert.low_noise.text = expert.text  # one text stack: a prompt is encoded once


def assemble(
    name: str,
    family: Family,
    index: dict,
    component: Callable[[str], Any],
    network: torch.nn.Module,
    vae: AutoencoderKL | None,
    scheduler: tuple[dict, Schedule],
    cache: dict | None = None,
) -> Expert:
    """An expert of ``family`` from its loaded denoiser, VAE and scheduler; ``component(name)``
    gives the other components ``index`` (a ``model_index.json`` or its equivalent) lists."""
    scheduler_config, schedule = scheduler
    prediction_type = (
        "flow" if schedule.kind == "flow" else scheduler_config.get("prediction_type", "epsilon")
    )
    text = family.text_stack(index, component, network, cache)
    # No VAE: a pixel space, optionally folding patches into channels.
    space = (
        LatentSpace(vae) if vae is not None else LatentSpace(None, index.get("pixel_unshuffle", 1))
    )
    # A denoiser takes the latents, or (a dedicated inpainting model) the latents, a mask and
    # the masked picture's latents; an instruct model's other inputs have no source here.
    takes = family.latent_channels(network)
    inpainting = takes == family.inpainting_channels(space.channels, space.factor)
    if takes != space.channels and not inpainting:
        raise UserError(
            f"{name}: the {type(network).__name__} takes {takes} latent channels where its "
            f"latent space has {space.channels} (an instruct model?); pangu-draw takes "
            "text-to-image models and inpainting models"
        )
    # Convolutions in channels-last layout: a third faster for one image on the CPU, the
    # same in batches (BENCHMARKS.md, "Equal quality in fewer steps"); values agree with
    # the default layout to ~1e-6.
    if family.channels_last():
        network.to(memory_format=torch.channels_last)
    if vae is not None and not (space.video or space.doubled):  # (a video VAE: 3-d convs)
        vae.to(memory_format=torch.channels_last)
    return Expert(
        name=name,
        network=network.eval(),
        space=space,
        text=text,
        schedule=schedule,
        prediction_type=prediction_type,
        scheduler_config=scheduler_config,
        family=family,
        sample_size=family.native_size(network, space.factor),
        dtype=next(network.parameters()).dtype,
        inpainting=inpainting,
    )
