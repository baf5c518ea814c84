"""PanGu-Draw's claim (b): Coop-Diffusion combines experts with different latent spaces
and controls without retraining. Measured on the bundled models.

Multi-control: 32 emoji the models never trained on (tests/data/emoji_heldout) give
32 edge maps (Canny, images 0-31) and 32 colour layouts (8x8, images 32-63); the prompt
is the edge image's caption. Configurations: the Canny-ControlNet expert alone (`full`,
space A), the colour-ControlNet expert alone (`generator_b`, space B) and both in one Coop
loop (weights 0.5 / 0.5, canvas in space A), for carry vs resample noise and bridging
every 1, 2 and 4 steps. Each reports edge F1, colour-layout error, caption retrieval
(top-5 among the 32 prompts) and FID against the 3,786 Noto emoji (emoji features, not
Inception; 32 samples make it noisy: compare rows, not with published numbers).

Resolution: the 32 px structure expert (pixel space, t >= 500) with the 64 px monolithic
expert (space A, t < 500) via Coop against the 64 px expert alone, at 64 and 128 px, on
64 captions drawn from the data.

    .venv/bin/python benchmarks/bench_coop_quality.py
    .venv/bin/python benchmarks/bench_coop_quality.py --resolution 128   # one part, merged
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
HELD_OUT = Path(__file__).resolve().parents[1] / "tests/data/emoji_heldout"
STEPS, GUIDANCE, SAMPLER = 25, 5.0, "euler"


def run(participants, canvas, n, policy="carry", bridge_every=1, seed=0) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    from pangudraw.coop import make_scheduler, sample

    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    noise = randn_tensor(canvas.latent_shape(n), generator=generators)
    owner = participants[0].expert
    scheduler = make_scheduler(SAMPLER, owner.scheduler_config)
    with torch.inference_mode():
        latents = sample(participants, scheduler, noise, STEPS, generators, None, canvas,
                         policy, bridge_every)  # fmt: skip
        images = (canvas.space.decode(latents).float() / 2 + 0.5).clamp(0, 1)
    return (images * 255).round().to(torch.uint8)


def metrics(images, prompts, net, fid, edges=None, layouts=None) -> dict:
    """``fid``: a scorer from :func:`pangudraw.evaluate.fid.fid_against`."""
    from pangudraw.evaluate.control import colour_layout_error, edge_f1
    from pangudraw.evaluate.features import caption_embeddings
    from pangudraw.evaluate.report import retrieval
    from pangudraw.imageio import resize_pixels

    images = resize_pixels(images, (64, 64))  # the evaluator sees 64 px
    distinct = sorted(set(prompts))
    truth = torch.tensor([distinct.index(p) for p in prompts])
    accuracy = retrieval(net, images, caption_embeddings(distinct), truth)
    out = {
        "fid_emoji_features": fid(images.float() / 255),
        "retrieval_top1": accuracy[1],
        "retrieval_top5": accuracy[5],
    }
    if edges is not None:
        out["edge_f1"] = float(edge_f1(images, edges).mean())
    if layouts is not None:
        out["colour_layout_error"] = float(colour_layout_error(images, layouts).mean())
    return out


def main(only_sizes: tuple[int, ...] = ()) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_decoupled_quality import real_images

    from pangudraw.bridge import Site
    from pangudraw.controls import ControlTransform
    from pangudraw.coop import Participant
    from pangudraw.evaluate.features import load_evaluator
    from pangudraw.evaluate.fid import FeatureExtractor, fid_against
    from pangudraw.evaluate.report import read_folder
    from pangudraw.expert import Control
    from pangudraw.loading.models import load_controlnet, load_expert
    from pangudraw.pipelines import split_sigma

    real, texts = real_images()
    net = load_evaluator()
    fid = fid_against(real.float() / 255, FeatureExtractor(net, net.num_features, 64))
    full, gen_b = load_expert("zoo:full"), load_expert("zoo:generator_b")
    canny, colour = (
        load_controlnet("zoo:controlnet_canny", full),
        load_controlnet("zoo:controlnet_colour", gen_b),
    )
    paths, held = read_folder(HELD_OUT)
    captions = json.loads((HELD_OUT / "captions.json").read_text())
    n = 32
    prompts = [captions[p.name]["text"] for p in paths[:n]]
    edges = ControlTransform("canny")(held[:n])
    layouts = ControlTransform("colour")(held[n : 2 * n])

    def edge_part(weight=1.0):
        cond = full.encode_prompt(prompts, None, GUIDANCE)
        return Participant(full, cond, GUIDANCE, weight, controls=[Control(canny, edges)])

    def colour_part(weight=1.0):
        cond = gen_b.encode_prompt(prompts, None, GUIDANCE)
        return Participant(gen_b, cond, GUIDANCE, weight, size=(64, 64),
                           controls=[Control(colour, layouts)])  # fmt: skip

    site_a, site_b = Site(full.space, (64, 64)), Site(gen_b.space, (64, 64))
    configs = {
        "canny expert alone (space A)": ([edge_part()], site_a, "carry", 1),
        "colour expert alone (space B)": ([colour_part()], site_b, "carry", 1),
        "Coop, carry, bridge every step": ([edge_part(0.5), colour_part(0.5)], site_a, "carry", 1),
        "Coop, resample, bridge every step": (
            [edge_part(0.5), colour_part(0.5)], site_a, "resample", 1),
        "Coop, carry, bridge every 2": ([edge_part(0.5), colour_part(0.5)], site_a, "carry", 2),
        "Coop, carry, bridge every 4": ([edge_part(0.5), colour_part(0.5)], site_a, "carry", 4),
    }  # fmt: skip
    multi, resolution, sheets = {}, {}, []
    if only_sizes:  # add to the saved results instead of starting over
        saved = json.loads((RESULTS / "coop_quality.json").read_text())
        multi, resolution, configs = saved["multi_control"], saved["resolution"], {}
    for name, (parts, canvas, policy, k) in configs.items():
        tick = time.perf_counter()
        images = run(parts, canvas, n, policy, k)
        multi[name] = metrics(images, prompts, net, fid, edges, layouts)
        multi[name]["wall_s"] = round(time.perf_counter() - tick, 1)
        sheets.append(images[:8])
        print(name, multi[name], flush=True)
        save(multi, resolution, n)
    if sheets:
        save_sheets(multi, sheets, held[:8], held[n : n + 8], RESULTS / "coop_quality_samples.png")

    # Resolution: a 32 px expert with a 64 px expert, at 64 and 128 px.
    structure = load_expert("zoo:structure")
    index = np.random.default_rng(1).choice(len(texts), 64, replace=False)
    res_prompts = [texts[i] for i in index]
    split = split_sigma(full, 500)
    for size in only_sizes or (64, 128):
        canvas = Site(full.space, (size, size))
        cond = full.encode_prompt(res_prompts, None, GUIDANCE)
        alone = [Participant(full, cond, GUIDANCE)]
        coop = [
            Participant(structure, structure.encode_prompt(res_prompts, None, GUIDANCE),
                        GUIDANCE, 1.0, (split, math.inf), size=(32, 32)),
            Participant(full, cond, GUIDANCE, 1.0, (0.0, split)),
        ]  # fmt: skip
        for name, parts in ((f"64 px expert alone at {size} px", alone),
                            (f"32 px structure + 64 px expert at {size} px", coop)):  # fmt: skip
            tick = time.perf_counter()
            images = run(parts, canvas, len(res_prompts))
            resolution[name] = metrics(images, res_prompts, net, fid)
            resolution[name]["wall_s"] = round(time.perf_counter() - tick, 1)
            print(name, resolution[name], flush=True)
            save(multi, resolution, n)


def save(multi: dict, resolution: dict, n: int) -> None:
    """The JSON and the plot, rewritten after every configuration (a stopped run keeps
    what it measured)."""

    result = {
        "multi_control": multi,
        "resolution": resolution,
        "settings": {"steps": STEPS, "guidance": GUIDANCE, "sampler": SAMPLER,
                     "multi_control_images": n, "resolution_images": 64},
        "note": "FID in the bundled evaluator's emoji features (not Inception), few samples: "
        "compare rows with each other only. wall_s was measured beside other jobs.",
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "coop_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(multi, RESULTS / "coop_quality.png")


def plot(multi: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(multi)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    ax.barh(y - 0.2, [multi[k].get("edge_f1", 0) for k in names], 0.4,
            label="edge F1 vs the edge map (higher is better)")  # fmt: skip
    ax.barh(y + 0.2, [multi[k].get("colour_layout_error", 0) for k in names], 0.4,
            label="colour-layout error vs the layout (lower is better)")  # fmt: skip
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def save_sheets(multi: dict, sheets: list, edge_sources, colour_sources, path: Path) -> None:
    """Eight samples of each configuration under the two source rows, as one PNG."""
    from PIL import Image, ImageDraw

    rows = [("edge source", edge_sources), ("colour source", colour_sources)]
    rows += list(zip(multi, sheets))
    label = 230
    canvas = Image.new("RGB", (label + 8 * 64, 64 * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, images) in enumerate(rows):
        strip = torch.cat(list(images.permute(0, 2, 3, 1)), dim=1).numpy()
        canvas.paste(Image.fromarray(strip), (label, 64 * r))
        draw.text((4, 64 * r + 26), name, fill="black")
    canvas.save(path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--resolution",
        type=int,
        nargs="+",
        default=[],
        help="run only the resolution part at these sizes, merged into the JSON",
    )
    main(tuple(parser.parse_args().resolution))
