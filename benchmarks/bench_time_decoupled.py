"""Time-decoupled generation vs the diffusers SDXL base + refiner pair, same components.

Both sides run the same tiny SDXL-style model as structure and texture, 25 Euler steps,
split at t = 500, guidance 5, batch 1, alternating runs; reported as the ratio of medians
(ours / diffusers). Writes benchmarks/results/time_decoupled.json.

    .venv/bin/python benchmarks/bench_time_decoupled.py [--runs 9] [--sizes 8 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

from pangudraw.cli.shared import quiet_libraries
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the tiny test models
from side_by_side import compare, save  # noqa: E402

from fixtures.tiny_models import tiny_sdxl  # noqa: E402

PROMPT = "a red apple on a white background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[8, 32], help="latent sides (image side = 2x)"
    )
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    quiet_libraries()
    results = [measure(size, args.runs, args.steps) for size in args.sizes]
    save(results, Path(__file__).parent / "results" / "time_decoupled.json")


def measure(size: int, runs: int, steps: int) -> dict:
    folder = Path(tempfile.mkdtemp()) / "sdxl"
    base = tiny_sdxl(folder, sample_size=size)
    base.set_progress_bar_config(disable=True)
    refiner = StableDiffusionXLImg2ImgPipeline(**base.components)
    refiner.set_progress_bar_config(disable=True)
    expert = load_expert(folder)

    def ours() -> torch.Tensor:
        return generate(
            expert,
            expert,
            PROMPT,
            num_inference_steps=steps,
            guidance_scale=5.0,
            seed=0,
            t_split=500,
        ).images

    def theirs() -> torch.Tensor:
        base.scheduler = EulerDiscreteScheduler.from_config(base.scheduler.config)
        refiner.scheduler = EulerDiscreteScheduler.from_config(base.scheduler.config)
        common = dict(
            num_inference_steps=steps,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(0),
        )
        latents = base(PROMPT, denoising_end=0.5, output_type="latent", **common).images
        return refiner(
            PROMPT, image=latents, denoising_start=0.5, output_type="pt", **common
        ).images

    return {
        "benchmark": "time_decoupled_vs_diffusers_base_refiner",
        "steps": steps,
        "image_size": size * 2,
        **compare(ours, theirs, runs),
    }


if __name__ == "__main__":
    main()
