"""Each model family on its tiny test model: our loop against its own diffusers pipeline for
the same image (same components, seed, steps and guidance), and how long a folder takes to
load.

Per family: ``compare`` runs both sides 7 times, alternating, and reports the ratio of
medians (ours / diffusers; goal at most 1.0) with the largest pixel difference between the
two images (a like-for-like check); the load time is the median of 3 ``load_expert``
calls against 3 of the pipeline's ``from_pretrained``. Tiny models make per-call overhead
(text encoding, packing, the scheduler) the whole cost, so this is where a loop's
overhead shows; at real sizes the networks dominate and the ratios tend to 1 (the GPU
script in scripts/device/ runs real sizes from local paths).

Writes benchmarks/results/families.json and families.png.

    .venv/bin/python benchmarks/bench_families.py [--runs 7] [--steps 8] [--only wan qwen-image]

At real sizes, on a GPU, from model folders you have (nothing is downloaded; each family
named by ``--model`` is measured from its folder instead of the tiny model, at ``--size``,
and the peak GPU memory of each side is reported; results go to families-gpu.json)::

    python benchmarks/bench_families.py --device cuda --dtype bfloat16 --size 1024 \
        --steps 20 --runs 3 --model sdxl=/models/sdxl-base --model z-image=/models/Z-Image
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
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the tiny test models
from side_by_side import compare  # noqa: E402

from fixtures import tiny_models as tiny  # noqa: E402

PROMPT = "a red apple on a white background"
RESULTS = Path(__file__).parent / "results"
G = 3.0  # our -g, classic guidance: each pipeline's own name for it below


def _images(out):
    return out.frames[:, 0] if hasattr(out, "frames") else out.images


FAMILIES = {
    # name: (builder, pipeline class name, the pipeline's call for our -g G)
    "sd": (tiny.tiny_sd, "StableDiffusionPipeline", {"guidance_scale": G}),
    "sdxl": (tiny.tiny_sdxl, "StableDiffusionXLPipeline", {"guidance_scale": G}),
    "flux": (tiny.tiny_flux, "FluxPipeline", {"guidance_scale": G}),
    "wan": (tiny.tiny_wan, "WanPipeline", {"guidance_scale": G, "num_frames": 1}),
    "z-image": (tiny.tiny_z_image, "ZImagePipeline", {"guidance_scale": G - 1}),
    "qwen-image": (
        tiny.tiny_qwen_image,
        "QwenImagePipeline",
        {"true_cfg_scale": G, "negative_prompt": ""},
    ),
    "flux2": (tiny.tiny_flux2_klein, "Flux2KleinPipeline", {"guidance_scale": G}),
    # its -g is its guider's CFG scale (set on the guider below)
    "hunyuan-image": (tiny.tiny_hunyuan_image, "HunyuanImagePipeline", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--only", nargs="*", choices=list(FAMILIES), default=None)
    parser.add_argument("--model", action="append", default=[], metavar="FAMILY=FOLDER")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    quiet_libraries()
    work = Path(tempfile.mkdtemp())
    real = dict(item.split("=", 1) for item in args.model)
    if set(real) - set(FAMILIES):
        parser.error(f"--model takes one of {', '.join(FAMILIES)}")
    rows = []
    for name in real or args.only or FAMILIES:
        folder = Path(real[name]) if name in real else work / name
        place = (args.device, getattr(torch, args.dtype))
        row = measure(name, folder, args.runs, args.steps, args.size, name not in real, place)
        print(
            f"{name:>11}: ours/diffusers {row['ratio_ours_over_diffusers']:.3f}, "
            f"max |diff| {row['max_abs_image_difference']:.1e}, load {row['load_ratio']:.2f}x"
        )
        rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("families-gpu.json" if real else "families.json")
    if args.only and path.is_file():  # the families not measured now keep their rows
        done = {r["family"] for r in rows}
        kept = [r for r in json.loads(path.read_text()) if r["family"] not in done]
        rows = sorted(kept + rows, key=lambda r: list(FAMILIES).index(r["family"]))
    path.write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, path.with_suffix(".png"))


def measure(
    name: str, folder: Path, runs: int, steps: int, size: int, tiny_model: bool = True,
    place: tuple = ("cpu", torch.float32),
) -> dict:  # fmt: skip
    import diffusers

    build, pipeline, call = FAMILIES[name]
    if tiny_model:
        build(folder)
    device, dtype = place
    cls = getattr(diffusers, pipeline)
    pipe = cls.from_pretrained(folder, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "guider", None) is not None:
        pipe.guider = pipe.guider.new(guidance_scale=G)
    expert = load_expert(folder).to(device, dtype)
    peaks = {}

    def peak(side: str, fn):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        out = fn()
        if device.startswith("cuda"):
            peaks[side] = max(peaks.get(side, 0), torch.cuda.max_memory_allocated())
        return out

    def ours() -> torch.Tensor:
        kwargs = {"num_inference_steps": steps, "guidance_scale": G, "height": size, "width": size}
        return peak("ours", lambda: generate(expert, None, PROMPT, seed=0, **kwargs).images)

    def theirs() -> torch.Tensor:
        return peak("diffusers", _theirs)

    def _theirs() -> torch.Tensor:
        out = pipe(
            prompt=PROMPT,
            num_inference_steps=steps,
            height=size,
            width=size,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            **call,
        )
        return _images(out).float().cpu()

    loads = {"ours": [], "diffusers": []}
    for _ in range(3):
        for side, load in (
            ("ours", lambda: load_expert(folder)),
            ("diffusers", lambda: cls.from_pretrained(folder)),
        ):
            start = time.perf_counter()
            load()
            loads[side].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in loads.items()}
    return {
        "family": name,
        "pipeline": pipeline,
        "steps": steps,
        "image_size": size,
        "guidance": G,
        **compare(ours, theirs, runs),
        "load_median_s": medians,
        "load_ratio": medians["ours"] / medians["diffusers"],
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_gpu_bytes": peaks or None,
    }


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["family"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    xs = range(len(rows))
    ax.bar(
        [x - 0.2 for x in xs], [r["ratio_ours_over_diffusers"] for r in rows], 0.4, label="sampling"
    )
    ax.bar([x + 0.2 for x in xs], [r["load_ratio"] for r in rows], 0.4, label="folder load")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(list(xs), names, rotation=20, ha="right")
    ax.set_ylabel("ours / diffusers (time)")
    ax.set_title(f"Tiny models, {rows[0]['steps']} steps, {rows[0]['image_size']} px, CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
