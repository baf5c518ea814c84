"""Starting from a picture: what a strength costs, and our loop against diffusers' pipelines.

1. Strength: image to image at strength s runs the last s of the steps, so it should cost
   about s of a text-to-image generation (plus one VAE encode). The bundled structure +
   texture pair, alternating runs of every strength and of text to image; reported as
   the ratio of medians to text to image.
2. Our loop against diffusers' img2img and inpaint pipelines on the tiny test models
   (SDXL and Flux.1, strength 0.6): ratio of medians (goal at most 1.0) and the largest
   pixel difference between the two images.

Writes benchmarks/results/edit.json and edit.png.

    .venv/bin/python benchmarks/bench_edit.py [--runs 7] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pangudraw.cli.shared import quiet_libraries
from pangudraw.editing import EditSpec
from pangudraw.loading.models import ModelCache, load_expert
from pangudraw.pipelines import generate

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the tiny test models
from side_by_side import compare  # noqa: E402

from fixtures.tiny_models import tiny_flux, tiny_sdxl  # noqa: E402

PROMPT = "a red apple on a white background"
STRENGTHS = (0.25, 0.5, 0.75, 1.0)
RESULTS = Path(__file__).parent / "results"
EXAMPLES = Path(__file__).parents[1] / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    quiet_libraries()
    cost = strength_cost(args.runs, args.steps)
    work = Path(tempfile.mkdtemp())
    against = against_diffusers(work, args.runs, args.steps)
    result = {"strength_cost": cost, "against_diffusers": against}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "edit.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(cost, RESULTS / "edit.png")


def strength_cost(runs: int, steps: int) -> dict:
    """Median time of image to image at each strength over text to image's, bundled pair."""
    models = ModelCache()
    structure, texture = models.get("structure"), models.get("texture")
    heart = str(EXAMPLES / "heart.png")
    kwargs = {"num_inference_steps": steps, "seed": 0, "num_images": 4}

    def run(strength: float | None) -> None:
        edit = None if strength is None else EditSpec(heart, strength)
        generate(structure, texture, "red heart", edit=edit, **kwargs)

    cases = [None, *STRENGTHS]
    times: dict[str, list[float]] = {str(s): [] for s in cases}
    for case in cases:
        run(case)  # warm-up
    order = random.Random(0)
    for _ in range(runs):
        order.shuffle(cases)  # no case always first or last in a round
        for case in cases:
            start = time.perf_counter()
            run(case)
            times[str(case)].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratios = {str(s): medians[str(s)] / medians["None"] for s in STRENGTHS}
    fractions = {str(s): min(int(steps * s), steps) / steps for s in STRENGTHS}
    for s in STRENGTHS:
        print(
            f"strength {s}: {ratios[str(s)]:.3f} of text to image "
            f"({fractions[str(s)]:.2f} of the steps run)"
        )
    return {
        "model": "bundled structure + texture, 64 px, batch 4",
        "steps": steps,
        "runs": runs,
        "median_s": medians,
        "times_s": times,
        "ratio_to_text_to_image": ratios,
        "fraction_of_steps_run": fractions,
        "threads": torch.get_num_threads(),
    }


def against_diffusers(work: Path, runs: int, steps: int) -> list[dict]:
    from diffusers import (
        FluxImg2ImgPipeline,
        FluxInpaintPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
    )

    tiny_sdxl(work / "sdxl")
    tiny_flux(work / "flux")
    size = 32
    picture, mask = _picture(work / "in.png", size), _mask(work / "mask.png", size)
    cases = (
        ("sdxl", "image to image", StableDiffusionXLImg2ImgPipeline, False, 5.0),
        ("sdxl", "inpainting", StableDiffusionXLInpaintPipeline, True, 5.0),
        ("flux", "image to image", FluxImg2ImgPipeline, False, 3.5),
        ("flux", "inpainting", FluxInpaintPipeline, True, 3.5),
    )
    results = []
    for model, what, pipeline, inpaint, guidance in cases:
        expert = load_expert(work / model)
        pipe = pipeline.from_pretrained(work / model)
        pipe.set_progress_bar_config(disable=True)
        edit = EditSpec(str(picture), 0.6, str(mask) if inpaint else None)
        extra = {"mask_image": Image.open(mask)} if inpaint else {}

        def ours(expert=expert, edit=edit, guidance=guidance) -> torch.Tensor:
            return generate(
                expert,
                None,
                PROMPT,
                seed=0,
                edit=edit,
                num_inference_steps=steps,
                guidance_scale=guidance,
            ).images

        def theirs(pipe=pipe, extra=extra, guidance=guidance) -> torch.Tensor:
            return pipe(
                PROMPT,
                image=Image.open(picture),
                strength=0.6,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=size,
                width=size,
                generator=torch.Generator().manual_seed(0),
                output_type="pt",
                **extra,
            ).images

        row = {"model": model, "edit": what, "pipeline": pipeline.__name__, "steps": steps}
        row |= compare(ours, theirs, runs)
        print(
            f"{model} {what}: ours/diffusers {row['ratio_ours_over_diffusers']:.3f}, "
            f"max |diff| {row['max_abs_image_difference']:.1e}"
        )
        results.append(row)
    return results


def _picture(path: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


def _mask(path: Path, size: int) -> Path:
    array = np.zeros((size, size), dtype=np.uint8)
    array[size // 4 : 3 * size // 4, size // 4 :] = 255
    Image.fromarray(array).save(path)
    return path


def plot(cost: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strengths = list(STRENGTHS)
    ratios = [cost["ratio_to_text_to_image"][str(s)] for s in strengths]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="cost = strength")
    ax.plot(strengths, ratios, "o-", label="measured")
    ax.set_xlabel("strength")
    ax.set_ylabel("time / text to image")
    ax.set_title(f"Image to image, bundled pair, {cost['steps']} steps")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.15)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
