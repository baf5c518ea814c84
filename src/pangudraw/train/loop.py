"""The training loop: build, step, save, sample, export. Runs under ``accelerate launch``.

Every random draw of a step (batch order, noise, timesteps, caption dropout) is a pure
function of (seed, step), so a run resumed from a checkpoint continues exactly as if it
had never stopped. Checkpoints are written to a temporary folder and renamed into place:
a checkpoint folder that exists is complete.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..experts import Expert, SDText
from ..files import check_output_folder
from ..imageio import save_grid
from ..latents import LatentSpace
from ..noise import DiscreteVPSchedule
from .checkpoint import check_trusted, load_checkpoint, resolve_checkpoint, save_checkpoint
from .config import SCHEDULE, TrainConfig
from .data import Pool, load_records, stage_pool
from .losses import Batch, ControlNetLoss, DenoisingLoss, VAELoss

# ---------------------------------------------------------------------------- data


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(folder: Path, name: str, compute) -> dict[str, torch.Tensor]:
    """Load ``folder/name.safetensors`` or compute, save atomically and return it."""
    path = folder / f"{name}.safetensors"
    if path.is_file():
        return load_file(path)
    tensors = compute()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)
    return tensors


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
class StageData:
    """What a stage trains on, all precomputed: clean inputs and caption embeddings."""

    pool: Pool
    mean: torch.Tensor  # (N, C, h, w): latent posterior means (scaled) or pixels in [-1, 1]
    std: torch.Tensor | None  # (N, C, h, w) latent posterior stds (scaled); None for pixels
    embeds: torch.Tensor | None  # (N, L, D)
    empty: torch.Tensor | None  # (1, L, D): the empty caption, for guidance dropout
    control: torch.Tensor | None = None  # (N, 3, R, R) control images in [0, 1]


def _cache_folder(config: TrainConfig) -> Path:
    root = Path(config.data)
    return (root if root.is_dir() else root.parent) / ".cache"


def load_pool(config: TrainConfig) -> Pool:
    """The stage's images (resized, filtered), cached beside the data.

    The cache sits inside the dataset, so its key need not name the dataset's path (and a
    dataset copied elsewhere keeps its cache). ``report["cache_key"]`` names the pool.
    """
    records = load_records(config.data)
    cache = _cache_folder(config)
    data_key = _fingerprint([(r.key, r.text) for r in records])
    pool_key = _fingerprint(data_key, config.resolution, config.min_size)
    pool_file = cache / f"pool-{pool_key}.json"
    if pool_file.is_file():
        meta = json.loads(pool_file.read_text())
        pixels = _cached(cache, f"pixels-{pool_key}", lambda: {})["pixels"]
        pool = Pool(pixels, meta["texts"], meta["keys"], meta["report"])
    else:
        pool = stage_pool(records, config.resolution, config.min_size)
        _cached(cache, f"pixels-{pool_key}", lambda: {"pixels": pool.pixels})
        pool_file.write_text(
            json.dumps({"texts": pool.texts, "keys": pool.keys, "report": pool.report})
        )
    pool.report["cache_key"] = pool_key
    return pool


def prepare_data(
    config: TrainConfig, space: LatentSpace, text: SDText | None, codec: str | None = None
) -> StageData:
    """Stage pool, latents and text embeddings, each cached once per ingredient set.

    ``codec`` names the folder whose VAE and text encoder are used (the trained VAE, or the
    base expert of a ControlNet); it keys the latent and text caches.
    """
    pool = load_pool(config)
    pool_key = pool.report["cache_key"]
    cache = _cache_folder(config)
    images = pool.pixels.float() / 127.5 - 1
    if config.stage == "vae":
        return StageData(pool, images, None, None, None)

    if space.vae is None:
        mean, std = space.encode(images), None
    else:
        vae_key = _fingerprint(pool_key, codec, os.path.getmtime(codec))

        def encode() -> dict[str, torch.Tensor]:
            means, stds = [], []
            with torch.no_grad():
                for chunk in images.split(64):
                    posterior = space.vae.encode(chunk).latent_dist
                    scale = space.vae.config.scaling_factor
                    shift = getattr(space.vae.config, "shift_factor", None) or 0.0
                    means.append((posterior.mean - shift) * scale)
                    stds.append(posterior.std * scale)
            return {"mean": torch.cat(means), "std": torch.cat(stds)}

        latents = _cached(cache, f"latents-{vae_key}", encode)
        mean, std = latents["mean"], latents["std"]

    text_key = _fingerprint(pool_key, config.base or config.text_encoder)

    def embed() -> dict[str, torch.Tensor]:
        rows = [
            text.encode(chunk, None, False, (0, 0)).embeds for chunk in _chunks(pool.texts, 256)
        ]
        return {"embeds": torch.cat(rows), "empty": text.encode([""], None, False, (0, 0)).embeds}

    embeddings = _cached(cache, f"text-{text_key}", embed)
    control = None
    if config.stage == "controlnet":
        from ..controls import ControlTransform

        control = ControlTransform(**config.control)(pool.pixels)
    return StageData(pool, mean, std, embeddings["embeds"], embeddings["empty"], control)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------------------- build


def build_model(
    config: TrainConfig, space: LatentSpace, text_dim: int, base: Expert | None = None
) -> torch.nn.Module:
    torch.manual_seed(config.seed)
    if base is not None:
        from diffusers import ControlNetModel

        # The conditioning embedding brings control images down to the latent size.
        steps = space.factor.bit_length() - 1
        channels = [16, 32, 96, 256][: steps + 1] if steps else [16]
        return ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=channels)
    if config.stage == "vae":
        arch = {
            "block_out_channels": [32, 64],
            "latent_channels": 4,
            "norm_num_groups": 8,
            "layers_per_block": 1,
        } | config.vae_model
        n = len(arch["block_out_channels"])
        arch = {
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
        } | arch
        return AutoencoderKL(in_channels=3, out_channels=3, sample_size=config.resolution, **arch)
    arch = {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "attention_head_dim": 4,
    } | config.unet
    n = len(arch["block_out_channels"])
    arch = {
        "down_block_types": ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1),
    } | arch
    if config.resolution % (space.factor * 2 ** (n - 1)):
        raise UserError(
            f"resolution {config.resolution} is not a multiple of "
            f"{space.factor * 2 ** (n - 1)} (latent factor x UNet downsampling)"
        )
    return UNet2DConditionModel(
        sample_size=config.resolution // space.factor,
        in_channels=space.channels,
        out_channels=space.channels,
        cross_attention_dim=text_dim,
        **arch,
    )


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
        from ..experts import load_expert

        base = load_expert(config.base, allow_pickle)
        space, text, codec = base.space, base.text, config.base
    else:
        vae = load_vae(config.vae) if config.vae and config.stage != "vae" else None
        space = LatentSpace(vae, config.pixel_unshuffle if vae is None else 1)
        text = None if config.stage == "vae" else load_text_stack(config.text_encoder)
        codec = config.vae
    with accelerator.main_process_first():
        data = prepare_data(config, space, text, codec)
    text_dim = 0 if data.embeds is None else data.embeds.shape[-1]
    model = build_model(config, space, text_dim, base)
    ema = EMAModel(model.parameters(), decay=config.ema_decay, foreach=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    if config.stage == "vae":
        loss = VAELoss(config.kl_weight)
    elif base is not None:
        base.unet.requires_grad_(False)
        alphas = base.schedule.alphas_cumprod.float()
        loss = ControlNetLoss(alphas, config.timestep_range, base.unet.to(accelerator.device))
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


# ---------------------------------------------------------------------------- step


def step_generator(config: TrainConfig, step: int, micro: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed * 1_000_003 + step * 101 + micro)


def batch_indices(config: TrainConfig, n: int, step: int, micro: int) -> torch.Tensor:
    """The global batch of (step, micro): consecutive slices of per-epoch permutations."""
    size = config.batch_size
    start = (step * config.grad_accum + micro) * size
    epoch, offset = divmod(start, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + epoch))
    if offset + size <= n:
        return order[offset : offset + size]
    following = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + epoch + 1))
    return torch.cat([order[offset:], following[: offset + size - n]])


def micro_batch(run: Run, step: int, micro: int) -> Batch:
    """This process's share of the batch, with caption dropout, on the run's device."""
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    indices = batch_indices(run.config, run.data.mean.shape[0], step, micro)[rank::world]
    generator = step_generator(run.config, step, micro)
    device = run.accelerator.device
    x0 = run.data.mean[indices]
    if run.data.std is not None:  # a fresh sample of each latent posterior
        x0 = x0 + run.data.std[indices] * torch.randn(x0.shape, generator=generator)
    embeds = control = None
    if run.data.embeds is not None:
        embeds = run.data.embeds[indices].float()
        dropped = torch.rand(len(indices), generator=generator) < run.config.cfg_dropout
        embeds[dropped] = run.data.empty.float()
        embeds = embeds.to(device)
    if run.data.control is not None:
        control = run.data.control[indices].to(device)
    return Batch(x0.to(device), embeds, control, generator)


def train_step(run: Run, step: int) -> float:
    total = 0.0
    for micro in range(run.config.grad_accum):
        batch = micro_batch(run, step, micro)
        with run.accelerator.autocast():
            loss = run.loss(run.model, batch)
        run.accelerator.backward(loss / run.config.grad_accum)
        total += loss.item() / run.config.grad_accum
    run.accelerator.clip_grad_norm_(run.model.parameters(), run.config.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.ema.step(run.accelerator.unwrap_model(run.model).parameters())
    return total


def measure_flops(run: Run) -> float:
    """FLOPs of one forward + backward on one image (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(run.accelerator.unwrap_model(run.model))
    batch = micro_batch(run, 0, 0)
    one = Batch(
        batch.x0[:1],
        None if batch.embeds is None else batch.embeds[:1],
        None if batch.control is None else batch.control[:1],
        batch.generator,
    )
    with FlopCounterMode(display=False) as counter:
        run.loss(model, one).backward()
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------- save


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
        generate(expert, None, prompt, None, 25, 4.0, seed, sampler="dpmpp_2m", num_images=4).images
        for seed, prompt in enumerate(run.config.sample_prompts)
    ]
    save_grid(torch.cat(images), path, 4)


@torch.no_grad()
def control_samples(run: Run, controlnet: torch.nn.Module) -> torch.Tensor:
    """Four training controls (top row) and the base expert generating under them (bottom)."""
    from ..coop import Participant, make_scheduler, sample
    from ..experts import Control

    base, controls = run.base, run.data.control[:4]
    device = next(base.unet.parameters()).device
    base.unet.to("cpu")  # sample beside the CPU copy of the ControlNet
    images = []
    for i, control in enumerate(controls):
        cond = base.encode_prompt([run.data.pool.texts[i]], None, 4.0)
        participant = Participant(base, cond, 4.0, controls=[Control(controlnet, control[None])])
        shape = base.space.latent_shape(1, *controls.shape[-2:])
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(i))
        scheduler = make_scheduler("dpmpp_2m", base.scheduler_config)
        latents = sample([participant], scheduler, noise, 25)
        images.append((base.space.decode(latents).float() / 2 + 0.5).clamp(0, 1))
    base.unet.to(device)
    return torch.cat([controls, *images])


def as_expert(run: Run, unet: torch.nn.Module) -> Expert:
    size = run.config.resolution
    return Expert(
        name=f"{run.config.stage} (training)",
        unet=unet,
        space=run.space,
        text=run.text,
        schedule=DiscreteVPSchedule.from_config(SCHEDULE),
        prediction_type="epsilon",
        scheduler_config=dict(SCHEDULE),
        sample_size=(size, size),
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resources(run: Run, flops_per_image: float) -> dict:
    return {
        "stage": run.config.stage,
        "timestep_range": list(run.config.timestep_range) if run.config.stage != "vae" else None,
        "resolution": run.config.resolution,
        "optimizer_steps": run.state["step"],
        "images_seen": run.state["images_seen"],
        "flops_per_image": flops_per_image,
        "training_flops": flops_per_image * run.state["images_seen"],
        "wall_time_s": round(run.state["wall_time_s"], 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "processes": run.accelerator.num_processes,
        "data": run.data.pool.report,
    }


# ---------------------------------------------------------------------------- run


def train(
    config: TrainConfig,
    resume: str | None = None,
    progress: bool = True,
    max_minutes: float | None = None,
    allow_pickle: bool = False,
) -> Path | None:
    """Train one stage to ``config.max_steps`` (resuming if asked) and export it.

    With ``max_minutes`` the run stops after about that long with a checkpoint (a chunk of
    a longer run: continue with ``resume="latest"``) and exports nothing.
    Returns the exported folder on the main process and None otherwise.
    """
    from tqdm import tqdm

    from .export import export_stage

    check_output_folder(Path(config.output), "training output")
    if resume is not None:  # before any work: a foreign checkpoint is refused at once
        resume = str(resolve_checkpoint(Path(config.output), resume))
        check_trusted(Path(resume), allow_pickle)
    run = build(config, resume, allow_pickle)
    output = Path(config.output)
    main = run.accelerator.is_main_process
    if main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "data_report.json").write_text(json.dumps(run.data.pool.report, indent=2))
    flops_per_image = measure_flops(run)
    log = open(output / "train.log", "a") if main else None  # noqa: SIM115
    bar = tqdm(
        total=config.max_steps,
        initial=run.state["step"],
        desc=config.stage,
        unit="step",
        disable=not (progress and main),
    )
    started, images_per_step = time.perf_counter(), config.batch_size * config.grad_accum
    try:
        while run.state["step"] < config.max_steps:
            tick = time.perf_counter()
            loss = train_step(run, run.state["step"])
            run.state["step"] += 1
            run.state["images_seen"] += images_per_step
            run.state["wall_time_s"] += time.perf_counter() - tick
            rate = images_per_step / max(time.perf_counter() - tick, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
            step = run.state["step"]
            if log and (step % 10 == 0 or step == config.max_steps):
                log.write(
                    json.dumps(
                        {"step": step, "loss": round(loss, 6), "images_per_s": round(rate, 1)}
                    )
                    + "\n"
                )
                log.flush()
            out_of_time = max_minutes is not None and (
                time.perf_counter() - started > 60 * max_minutes
            )
            out_of_time = bool(run.accelerator.reduce(torch.tensor(float(out_of_time)), "max"))
            if step % config.checkpoint_every == 0 or step == config.max_steps or out_of_time:
                save_checkpoint(run)
            if out_of_time and step < config.max_steps:
                return None
            if main and config.sample_every and step % config.sample_every == 0:
                sample_grid(run, output / "samples" / f"step-{step:07d}.png")
            if main and config.snapshot_every and step % config.snapshot_every == 0:
                export_stage(
                    run,
                    ema_model(run),
                    resources(run, flops_per_image),
                    output / "snapshots" / f"step-{step:07d}",
                )
    finally:
        bar.close()
        if log:
            log.close()
    result = None
    if main:
        sample_grid(run, output / "samples" / "final.png")
        figures = resources(run, flops_per_image)
        figures["this_process_wall_s"] = round(time.perf_counter() - started, 1)
        result = export_stage(run, ema_model(run), figures)
        (output / "resources.json").write_text(json.dumps(figures, indent=2) + "\n")
    run.accelerator.wait_for_everyone()
    return result
