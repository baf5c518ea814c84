"""The training loop: every step draws its batch, steps the optimizer and the EMA, and
saves checkpoints, preview grids and snapshots on schedule. Runs under ``accelerate launch``.

Every random draw of a step (batch order, noise, timesteps, caption dropout) is a pure
function of (seed, step), so a run resumed from a checkpoint continues exactly as if it
had never stopped. Building the run, its data, checkpoints, previews and accounting live
in their own modules beside this one.

Design: docs/design.md, section 6.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..files import check_output_folder
from .accounting import measure_flops, resources
from .batches import micro_batch
from .build import Run, build
from .checkpoint import check_trusted, resolve_checkpoint, save_checkpoint
from .config import TrainConfig
from .preview import ema_model, sample_grid


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
            # Step.
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
                record = {"step": step, "loss": round(loss, 6), "images_per_s": round(rate, 1)}
                log.write(json.dumps(record) + "\n")
                log.flush()
            # Save: a checkpoint on schedule, at the end and when the chunk's time is up.
            out_of_time = max_minutes is not None and _out_of_time(run, started, max_minutes)
            if step % config.checkpoint_every == 0 or step == config.max_steps or out_of_time:
                save_checkpoint(run)
            if out_of_time and step < config.max_steps:
                return None
            # Preview and snapshot (the main process; they run on a CPU copy).
            if main and config.sample_every and step % config.sample_every == 0:
                sample_grid(run, output / "samples" / f"step-{step:07d}.png")
            if main and config.snapshot_every and step % config.snapshot_every == 0:
                snapshot = output / "snapshots" / f"step-{step:07d}"
                export_stage(run, ema_model(run), resources(run, flops_per_image), snapshot)
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


def _out_of_time(run: Run, started: float, max_minutes: float) -> bool:
    """Whether the chunk's time is up; every process stops at the same step."""
    late = time.perf_counter() - started > 60 * max_minutes
    return bool(run.accelerator.reduce(torch.tensor(float(late)), "max"))
