"""Our loop with one Flux.1 expert vs diffusers' FluxPipeline, same components.

Both sides run the same tiny Flux.1-dev-style model (guidance embedding 3.5, dynamic
shifting), the same prompt, seed and steps, batch 1, alternating runs; reported as the ratio
of medians (ours / diffusers) with the largest pixel difference between the two images.
Writes benchmarks/results/flux.json.

    .venv/bin/python benchmarks/bench_flux.py [--runs 9] [--sizes 32 64] [--steps 28]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import FluxPipeline

from pangudraw.cli.shared import quiet_libraries
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the tiny test models
from side_by_side import compare, save  # noqa: E402

from fixtures.tiny_models import tiny_flux  # noqa: E402

PROMPT = "a red apple on a white background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sides")
    parser.add_argument("--steps", type=int, default=28)
    args = parser.parse_args()
    quiet_libraries()
    folder = Path(tempfile.mkdtemp()) / "flux"
    tiny_flux(folder)
    pipe = FluxPipeline.from_pretrained(folder)  # loaded like ours (eval mode: no dropout)
    pipe.set_progress_bar_config(disable=True)
    expert = load_expert(folder)
    results = [measure(pipe, expert, size, args.runs, args.steps) for size in args.sizes]
    save(results, Path(__file__).parent / "results" / "flux.json")


def measure(pipe, expert, size: int, runs: int, steps: int) -> dict:
    def ours() -> torch.Tensor:
        return generate(
            expert,
            None,
            PROMPT,
            num_inference_steps=steps,
            guidance_scale=3.5,
            seed=0,
            height=size,
            width=size,
        ).images

    def theirs() -> torch.Tensor:
        return pipe(
            PROMPT,
            num_inference_steps=steps,
            guidance_scale=3.5,
            generator=torch.Generator().manual_seed(0),
            height=size,
            width=size,
            output_type="pt",
        ).images

    return {
        "benchmark": "flux_loop_vs_diffusers_flux_pipeline",
        "steps": steps,
        "image_size": size,
        **compare(ours, theirs, runs),
    }


if __name__ == "__main__":
    main()
