"""Building a training run: its ingredients (VAE, text encoder, frozen base expert), the
model, EMA, optimizer and loss, resumed from a checkpoint when asked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL
from diffusers.training_utils import EMAModel

from ..errors import UserError
from ..expert import Expert
from ..families.sd import SDText
from ..latents import LatentSpace
from ..noise import DiscreteVPSchedule
from .architecture import build_model
from .checkpoint import load_checkpoint, resolve_checkpoint
from .config import SCHEDULE, TrainConfig
from .losses import ControlNetLoss, DenoisingLoss, VAELoss
from .stagedata import StageData, prepare_data


def load_text_stack(name: str) -> SDText:
    """``minilm`` (the bundled models' encoder) or a pipeline folder's tokenizer/text_encoder."""
    if name == "minilm":
        from ..textenc import load_minilm

        return SDText(*load_minilm())
    from transformers import AutoModel, AutoTokenizer

    folder = Path(name)
    if not (folder / "text_encoder").is_dir():
        raise UserError(f"text encoder {folder} has no text_encoder/ folder; use 'minilm'")
    encoder = AutoModel.from_pretrained(folder / "text_encoder", use_safetensors=True)
    return SDText(AutoTokenizer.from_pretrained(folder / "tokenizer"), encoder.eval())


def load_vae(path: str) -> AutoencoderKL:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"VAE {folder} is not a diffusers AutoencoderKL folder (no config.json)")
    return AutoencoderKL.from_pretrained(folder, use_safetensors=True).eval()


@dataclass
class Run:
    """Everything one training process holds."""

    config: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module  # prepared (maybe DDP-wrapped)
    ema: EMAModel
    optimizer: torch.optim.Optimizer
    data: StageData
    loss: DenoisingLoss | VAELoss
    space: LatentSpace
    text: SDText | None
    state: dict
    base: Expert | None = None  # the frozen expert a ControlNet controls


def build(config: TrainConfig, resume: str | None = None, allow_pickle: bool = False) -> Run:
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision if torch.cuda.is_available() else "no",
        cpu=not torch.cuda.is_available(),
    )
    if config.batch_size % accelerator.num_processes:
        raise UserError(
            f"batch_size {config.batch_size} is not divisible by the "
            f"{accelerator.num_processes} processes"
        )
    base = None
    if config.stage == "controlnet":
        from ..loading.models import load_expert

        base = load_expert(config.base, allow_pickle)
        space, text, encoder_folder = base.space, base.text, config.base
    else:
        vae = load_vae(config.vae) if config.vae and config.stage != "vae" else None
        space = LatentSpace(vae, config.pixel_unshuffle if vae is None else 1)
        text = None if config.stage == "vae" else load_text_stack(config.text_encoder)
        encoder_folder = config.vae
    with accelerator.main_process_first():
        data = prepare_data(config, space, text, encoder_folder)
    text_dim = 0 if data.embeds is None else data.embeds.shape[-1]
    model = build_model(config, space, text_dim, base)
    ema = EMAModel(model.parameters(), decay=config.ema_decay, foreach=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    if config.stage == "vae":
        loss = VAELoss(config.kl_weight)
    elif base is not None:
        base.network.requires_grad_(False)
        alphas = base.schedule.alphas_cumprod.float()
        loss = ControlNetLoss(alphas, config.timestep_range, base.network.to(accelerator.device))
    else:
        schedule = DiscreteVPSchedule.from_config(SCHEDULE)
        loss = DenoisingLoss(schedule.alphas_cumprod.float(), config.timestep_range)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)  # the shadow weights live beside the model's
    state = {"step": 0, "images_seen": 0, "wall_time_s": 0.0}
    run = Run(config, accelerator, model, ema, optimizer, data, loss, space, text, state, base)
    if resume is not None:
        folder = resolve_checkpoint(Path(config.output), resume)
        run.state = load_checkpoint(run, folder, allow_pickle)
    return run
