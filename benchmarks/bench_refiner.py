"""HunyuanImage 2.1 with its refiner: in one loop (examples/hunyuan_refiner.toml) against
diffusers' two stages (HunyuanImagePipeline, the picture as a PNG, then
HunyuanImageRefinerPipeline on it), on the tiny test models.

Three ways to the same request (prompt, seed, size, the base's steps and guidance):

- ``diffusers``: the base pipeline for all its steps, its PIL picture, the refiner pipeline
  redrawing it from noise in 4 steps beside its latents noised to 0.25;
- ``ours, two stages``: our base expert, its PNG, our refiner expert on it
  (``--init-image``): the same work as diffusers', so its image must be diffusers' (this
  checks the pieces);
- ``ours, one loop``: the recipe: the base for the steps above its window, then the
  refiner on the canvas for the rest, beside the canvas's estimate noised to 0.25 (no PNG,
  no redraw from noise).

Reported: each way's median time over alternating runs (ratios to diffusers), network
passes, and how far the pictures are apart (mean absolute pixel difference in [0, 1]).
The tiny models have random weights, so what the pictures look like says nothing about
quality: only time, work and the likeness of the two-stage ways are measured here.

    .venv/bin/python benchmarks/bench_refiner.py [--runs 7] [--steps 8]

Writes benchmarks/results/refiner.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pangudraw.cli.shared import quiet_libraries
from pangudraw.editing import EditSpec
from pangudraw.loading.models import ModelCache, load_expert
from pangudraw.pipelines import coop_generate, generate
from pangudraw.recipes import parse_recipe
from pangudraw.tomlconf import read_toml

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the tiny test models
from fixtures import tiny_models as tiny  # noqa: E402

ROOT = Path(__file__).parents[1]
RESULTS = Path(__file__).parent / "results"
PROMPT = 'a sign that says "hi"'
SIZE = 32
G, G_REFINER = 3.5, 3.25
REFINER_STEPS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=8, help="the base's steps")
    args = parser.parse_args()
    quiet_libraries()
    from diffusers import HunyuanImagePipeline, HunyuanImageRefinerPipeline

    work = Path(tempfile.mkdtemp())
    tiny.tiny_hunyuan_image(work / "base")
    tiny.tiny_hunyuan_refiner(work / "refiner")
    base, refiner = load_expert(work / "base"), load_expert(work / "refiner")
    pipes = (
        HunyuanImagePipeline.from_pretrained(work / "base"),
        HunyuanImageRefinerPipeline.from_pretrained(work / "refiner"),
    )
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    pipes[0].guider = pipes[0].guider.new(guidance_scale=G)
    sizes = {"height": SIZE, "width": SIZE}

    def diffusers_way() -> torch.Tensor:
        picture = pipes[0](
            PROMPT,
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(0),
            **sizes,
        ).images[0]
        return pipes[1](
            PROMPT,
            image=picture,
            num_inference_steps=REFINER_STEPS,
            distilled_guidance_scale=G_REFINER,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            **sizes,
        ).images

    def two_stages() -> torch.Tensor:
        first = generate(
            base,
            None,
            PROMPT,
            seed=0,
            guidance_scale=G,
            num_inference_steps=args.steps,
            **sizes,
        )
        png = work / "base.png"
        first.to_pil()[0].save(png)
        return generate(
            refiner,
            None,
            PROMPT,
            seed=0,
            guidance_scale=G_REFINER,
            num_inference_steps=REFINER_STEPS,
            edit=EditSpec(str(png), 1.0),
            **sizes,
        ).images

    table = read_toml(ROOT / "examples" / "hunyuan_refiner.toml", "recipe")
    for expert, folder in zip(table["experts"], ("base", "refiner")):
        expert["model"] = str(work / folder)
    table["experts"][0]["size"] = [SIZE, SIZE]
    table["canvas"] |= sizes
    table["steps"] = args.steps
    recipe = parse_recipe(table, str(ROOT / "examples" / "hunyuan_refiner.toml"), work)
    steps: list = []
    models = ModelCache()  # loaded once, as the other ways' models are

    def one_loop() -> torch.Tensor:
        steps.clear()
        return coop_generate(recipe, callback=steps.append, models=models).images

    ways = {"diffusers": diffusers_way, "ours, two stages": two_stages, "ours, one loop": one_loop}
    images = {name: fn() for name, fn in ways.items()}  # also a warm-up
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.runs):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(v) for name, v in times.items()}
    refined = sum(1 for s in steps if s.active == [1])
    passes = {  # network calls: the base guided (2 a step), the refiner distilled (1)
        "diffusers": 2 * args.steps + REFINER_STEPS,
        "ours, two stages": 2 * args.steps + REFINER_STEPS,
        "ours, one loop": 2 * (args.steps - refined) + refined,
    }
    reference = images["diffusers"]
    result = {
        "prompt": PROMPT,
        "image_size": SIZE,
        "base_steps": args.steps,
        "refiner_steps_two_stage": REFINER_STEPS,
        "refiner_steps_one_loop": refined,
        "runs": args.runs,
        "median_s": medians,
        "ratio_to_diffusers": {k: v / medians["diffusers"] for k, v in medians.items()},
        "network_passes": passes,
        "max_abs_difference_to_diffusers": {
            k: float((v - reference).abs().max()) for k, v in images.items()
        },
        "mean_abs_difference_to_diffusers": {
            k: float((v - reference).abs().mean()) for k, v in images.items()
        },
        "machine": f"{torch.get_num_threads()} torch threads",
    }
    for name in ways:
        print(
            f"{name:>17}: {medians[name]:.3f} s ({result['ratio_to_diffusers'][name]:.2f}x), "
            f"{passes[name]} passes, mean |diff| to diffusers "
            f"{result['mean_abs_difference_to_diffusers'][name]:.4f}"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "refiner.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
