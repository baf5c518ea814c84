"""Preview images during training: fixed prompts and seeds with the EMA weights."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..expert import Expert
from ..families import BY_NAME
from ..imageio import save_grid
from ..noise import DiscreteVPSchedule
from .build import Run
from .config import SCHEDULE


def ema_model(run: Run) -> torch.nn.Module:
    """A CPU copy of the model holding the EMA weights, in eval mode.

    Sample grids and exports run on the CPU: small, and the same on every machine.
    """
    model = copy.deepcopy(run.accelerator.unwrap_model(run.model)).to("cpu")
    run.ema.copy_to(model.parameters())
    return model.eval()


def sample_grid(run: Run, path: Path) -> None:
    """Fixed prompts and seeds with the EMA weights (a VAE: originals over reconstructions)."""
    model = ema_model(run)
    if run.config.stage == "vae":
        spread = torch.linspace(0, run.data.mean.shape[0] - 1, 8).long()  # across the data
        originals = run.data.mean[spread]
        with torch.no_grad():
            reconstructions = model(originals).sample
        save_grid((torch.cat([originals, reconstructions]) / 2 + 0.5).clamp(0, 1), path, 8)
        return
    if run.base is not None:
        save_grid(control_samples(run, model), path, 4)
        return
    from ..pipelines import generate

    expert = as_expert(run, model)
    images = [
        generate(
            expert,
            None,
            prompt,
            num_inference_steps=25,
            guidance_scale=4.0,
            seed=seed,
            sampler="dpmpp_2m",
            num_images=4,
        ).images
        for seed, prompt in enumerate(run.config.sample_prompts)
    ]
    save_grid(torch.cat(images), path, 4)


@torch.no_grad()
def control_samples(run: Run, controlnet: torch.nn.Module) -> torch.Tensor:
    """Four training controls (top row) and the base expert generating under them (bottom)."""
    from ..coop import Participant, make_scheduler, sample
    from ..expert import Control

    base, controls = run.base, run.data.control[:4]
    device = next(base.network.parameters()).device
    base.network.to("cpu")  # sample beside the CPU copy of the ControlNet
    images = []
    for i, control in enumerate(controls):
        cond = base.encode_prompt([run.data.pool.texts[i]], None, 4.0)
        participant = Participant(base, cond, 4.0, controls=[Control(controlnet, control[None])])
        shape = base.space.latent_shape(1, *controls.shape[-2:])
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(i))
        scheduler = make_scheduler("dpmpp_2m", base.scheduler_config)
        latents = sample([participant], scheduler, noise, 25)
        images.append((base.space.decode(latents).float() / 2 + 0.5).clamp(0, 1))
    base.network.to(device)
    return torch.cat([controls, *images])


def as_expert(run: Run, unet: torch.nn.Module) -> Expert:
    size = run.config.resolution
    return Expert(
        name=f"{run.config.stage} (training)",
        network=unet,
        space=run.space,
        text=run.text,
        schedule=DiscreteVPSchedule.from_config(SCHEDULE),
        prediction_type="epsilon",
        scheduler_config=dict(SCHEDULE),
        family=BY_NAME["emoji"],  # the bundled models' kind: an SD UNet, MiniLM text
        sample_size=(size, size),
    )
