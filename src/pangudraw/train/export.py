"""Export a trained stage as a folder that loads with nothing else: safetensors + JSON + card."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler

from ..families.emoji import MINILM_REFERENCE
from ..files import drop_loading_paths
from .config import SCHEDULE


def _data_licence(data: str) -> str:
    info = Path(data) / "dataset.json"
    if info.is_file():
        meta = json.loads(info.read_text())
        return f"{meta.get('package', data)}: {meta.get('licence', 'see the dataset')}"
    return f"{Path(data).name}: licence not recorded; check the dataset's own terms"


def model_card(config, resources: dict, kind: str) -> str:
    lines = [
        f"# pangu-draw {config.stage} {kind}",
        "",
        f"- stage: `{config.stage}`"
        + (
            f", timesteps [{resources['timestep_range'][0]}, {resources['timestep_range'][1]})"
            if resources.get("timestep_range")
            else ""
        ),
        f"- resolution: {config.resolution} px; data: {_data_licence(config.data)}",
        f"- usable images: {resources['data']['usable']} of {resources['data']['images']} "
        f"(min_size {config.min_size}; {resources['data']['unreadable']} unreadable)",
        f"- optimizer steps: {resources['optimizer_steps']}, images seen: "
        f"{resources['images_seen']}, training FLOPs: {resources['training_flops']:.3e}, "
        f"wall time: {resources['wall_time_s']} s on {resources['processes']} process(es)",
        f"- text encoder: {config.text_encoder}",
        f"- command: `{' '.join(['pangu-draw', *sys.argv[1:]]) if sys.argv else ''}`",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(config.to_dict(), indent=2),
        "```",
    ]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def calibrate_scaling(vae, images: torch.Tensor) -> float:
    """Set ``scaling_factor`` so that scaled latents of ``images`` have unit variance.

    This is how Stable Diffusion's 0.18215 was chosen; diffusion training assumes
    unit-variance inputs. Returns the standard deviation of the raw latents.
    """
    means = torch.cat([vae.encode(chunk.float()).latent_dist.mean for chunk in images.split(64)])
    std = float(means.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return std


def _write_atomically(folder: Path, fill) -> Path:
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    drop_loading_paths(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def export_stage(run, model: torch.nn.Module, resources: dict, target: Path | None = None) -> Path:
    """``<output>/model`` (or ``target``): an AutoencoderKL folder (vae stage), a ControlNet
    folder, or a pipeline folder. Adds the VAE's measured latent std to ``resources``."""
    config = run.config
    dtype = torch.float16 if config.export_dtype == "float16" else torch.float32

    def fill(folder: Path) -> None:
        grid = Path(config.output) / "samples" / "final.png"
        if grid.is_file() and target is None:
            shutil.copy(grid, folder / "samples.png")
        (folder / "training_config.json").write_text(json.dumps(config.to_dict(), indent=2))
        (folder / "resources.json").write_text(json.dumps(resources, indent=2) + "\n")
        if config.stage == "vae":
            model.to(dtype).save_pretrained(folder, safe_serialization=True)
            (folder / "README.md").write_text(model_card(config, resources, "VAE"))
            return
        if config.stage == "controlnet":
            from ..controls import ControlTransform

            model.to(dtype).save_pretrained(folder, safe_serialization=True)
            ControlTransform(**config.control).save(folder)
            (folder / "README.md").write_text(model_card(config, resources, "ControlNet"))
            return
        model.to(dtype).save_pretrained(folder / "unet", safe_serialization=True)
        EulerDiscreteScheduler(**SCHEDULE).save_pretrained(folder / "scheduler")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        }
        if run.space.vae is not None:
            vae = copy.deepcopy(run.space.vae).to(dtype)
            vae.save_pretrained(folder / "vae", safe_serialization=True)
            index["vae"] = ["diffusers", "AutoencoderKL"]
        else:
            index["vae"] = [None, None]
            index["pixel_unshuffle"] = run.space.unshuffle
        if config.text_encoder == "minilm":
            index["text_encoder"] = index["tokenizer"] = MINILM_REFERENCE
        else:
            run.text.encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
            run.text.tokenizer.save_pretrained(folder / "tokenizer")
            index["text_encoder"] = ["transformers", type(run.text.encoder).__name__]
            index["tokenizer"] = ["transformers", type(run.text.tokenizer).__name__]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (folder / "README.md").write_text(model_card(config, resources, "generator"))

    if config.stage == "vae":
        resources["latent_std_raw"] = calibrate_scaling(model, run.data.mean[:512])
    return _write_atomically(target or Path(config.output) / "model", fill)
