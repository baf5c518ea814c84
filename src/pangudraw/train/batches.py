"""Each step's batch and randomness, a pure function of (seed, step, micro-batch): what
makes a resumed run continue exactly as an uninterrupted one would."""

from __future__ import annotations

import torch

from .build import Run
from .config import TrainConfig
from .losses import Batch


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
