"""Train the bundled learned bridges: translators distilled from the exact bridge.

For each ordered pair of bundled latent spaces that a Coop loop bridges (the structure
model's pixel space at 32 px <-> space A at 64 px, space A <-> space B at 64 px) the
translator learns to reproduce ``E_t(resize(D_s(x)))`` for inputs ``x`` like the estimates
a sampling loop bridges: clean latents of emoji images, averages of two to four of them
(what an estimate at high noise looks like: a blend of plausible images) and latents of
blurred images. The targets are computed once with the exact bridge; the loss is the mean
squared error on the target latents. One emoji in ten is held out, by the evaluator's
rule (a hash of the code points, scripts/train_evaluator.py), so the emoji of
``tests/data/emoji_heldout`` and of the Coop quality benchmark are unseen.

Run: ``python scripts/train_bridges.py`` (CPU, a few minutes per translator).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..bridge import Site, exact_bridge
from ..translate import Translator, TranslatorConfig, space_id
from .emoji import held_out


@dataclass(frozen=True)
class Route:
    """One translator to train: source model's space and size -> target's."""

    name: str
    source: str  # bundled model whose space is the source
    source_size: int
    target: str
    target_size: int


ROUTES = [
    Route("bridge_pixel_to_a", "structure", 32, "texture", 64),
    Route("bridge_a_to_pixel", "texture", 64, "structure", 32),
    Route("bridge_a_to_b", "full", 64, "generator_b", 64),
    Route("bridge_b_to_a", "generator_b", 64, "full", 64),
]


def emoji_images(data: Path, size: int, held: bool) -> torch.Tensor:
    """(N, 3, size, size) images in [-1, 1] of the training (or held-out) emoji."""
    from ..imageio import read_image

    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    files = [r["file_name"] for r in rows if held_out(r["file_name"]) == held]
    images = [read_image(data / f, "RGB", (size, size), "emoji image") for f in files]
    return torch.cat(images) * 2 - 1


def inputs_like_estimates(latents: torch.Tensor, images: torch.Tensor, space, gen) -> torch.Tensor:
    """Clean latents, blends of 2-4 of them, and latents of blurred images (one of each
    per image)."""
    n = len(latents)
    blends = torch.zeros_like(latents)
    for k in range(n):
        count = int(torch.randint(2, 5, (1,), generator=gen))
        pick = torch.randint(n, (count,), generator=gen)
        weights = torch.rand(count, generator=gen)
        weights = weights / weights.sum()
        blends[k] = (weights.view(-1, 1, 1, 1) * latents[pick]).sum(0)
    small = F.interpolate(images, scale_factor=0.25, mode="area")
    blurred = F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)
    with torch.no_grad():
        blurred_latents = torch.cat([space.encode(b) for b in blurred.split(128)])
    return torch.cat([latents, blends, blurred_latents])


def exact_targets(x: torch.Tensor, source: Site, target: Site) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([exact_bridge(chunk, source, target) for chunk in x.split(128)])


def sites(route: Route):
    from ..loading.models import load_expert

    source = load_expert(f"zoo:{route.source}").space
    target = load_expert(f"zoo:{route.target}").space
    return (
        Site(source, (route.source_size, route.source_size)),
        Site(target, (route.target_size, route.target_size)),
    )


def route_data(route: Route, data: Path, held: bool, seed: int = 0):
    """(inputs, exact targets) for a route on the training or held-out emoji."""
    source, target = sites(route)
    images = emoji_images(data, route.source_size, held)
    with torch.no_grad():
        latents = torch.cat([source.space.encode(b) for b in images.split(128)])
    gen = torch.Generator().manual_seed(seed)
    x = inputs_like_estimates(latents, images, source.space, gen)
    return x, exact_targets(x, source, target), source, target


def train_route(
    route: Route,
    data: Path,
    steps: int = 1500,
    batch: int = 64,
    lr: float = 2e-3,
    width: int = 48,
    blocks: int = 3,
    seed: int = 0,
    log=print,
) -> tuple[Translator, dict]:
    torch.manual_seed(seed)
    x, y, source, target = route_data(route, data, held=False, seed=seed)
    config = TranslatorConfig(
        x.shape[1], y.shape[1], width, blocks, space_id(source.space), space_id(target.space)
    )
    model = Translator(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed + 1)
    out_hw = tuple(y.shape[-2:])
    start, losses = time.perf_counter(), []
    for step in range(1, steps + 1):
        index = torch.randint(len(x), (batch,), generator=gen)
        loss = F.mse_loss(model(x[index], out_hw), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 250 == 0 or step == steps:
            recent = losses[-250:]
            log(f"{route.name} step {step}/{steps}: mse {sum(recent) / len(recent):.5f}")
    record = {
        "route": route.name,
        "source": f"zoo:{route.source} at {route.source_size} px",
        "target": f"zoo:{route.target} at {route.target_size} px",
        "training_inputs": len(x),
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seconds": round(time.perf_counter() - start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_mse": round(sum(losses[-100:]) / len(losses[-100:]), 6),
        "target_variance": round(float(y.var()), 6),
    }
    return model.eval().requires_grad_(False), record
