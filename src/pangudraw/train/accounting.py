"""What a training run cost: FLOPs per image, images seen, wall time, peak memory."""

from __future__ import annotations

import copy
import resource

from .batches import micro_batch
from .build import Run
from .losses import Batch


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
