"""Equal quality in fewer steps? FID and caption retrieval of the bundled pair against the
number of sampler steps, for euler, dpmpp_2m and unipc (issue 15, item 2).

192 captions drawn from the training data with a fixed seed, one image each (seeds
1000..1191, guidance 7, 64x64, the zoo's structure + texture, batches of 8); the reference
setting (25 Euler steps, the default) is also run with a second set of seeds, and the
difference between the two is the noise a cheaper setting must stay within. FID is in
the bundled evaluator's emoji features (not Inception) against the whole Noto set;
wall time per image is measured in this process alongside.

    .venv/bin/python benchmarks/bench_steps.py   # writes benchmarks/results/steps.{json,png}
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from bench_decoupled_quality import real_images

RESULTS = Path(__file__).parent / "results"
CAPTIONS = 192
SETTINGS = [
    ("euler", 25),
    ("euler", 15),
    ("euler", 10),
    ("dpmpp_2m", 25),
    ("dpmpp_2m", 15),
    ("dpmpp_2m", 10),
    ("dpmpp_2m", 8),
    ("unipc", 15),
    ("unipc", 10),
    ("unipc", 8),
]


def main() -> None:
    from pangudraw.evaluate.features import caption_embeddings, load_evaluator
    from pangudraw.evaluate.fid import FeatureExtractor, fid_against
    from pangudraw.evaluate.report import retrieval
    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate
    from pangudraw.zoo import MODELS

    real, texts = real_images()
    prompts = random.Random(0).sample(texts, CAPTIONS)
    distinct = sorted(set(prompts))
    captions = caption_embeddings(distinct)
    truth = torch.tensor([distinct.index(p) for p in prompts])
    net = load_evaluator()
    fid = fid_against(real.float() / 255, FeatureExtractor(net, net.num_features, 64))
    structure, texture = load_expert(MODELS / "structure"), load_expert(MODELS / "texture")

    def images(sampler: str, steps: int, first_seed: int) -> tuple[torch.Tensor, float]:
        made, tick = [], time.perf_counter()
        for i in range(0, CAPTIONS, 8):
            batch = prompts[i : i + 8]
            out = generate(structure, texture, batch, num_inference_steps=steps,
                           sampler=sampler, seed=first_seed + i, num_images=len(batch))  # fmt: skip
            made.append(out.images)
        return torch.cat(made), (time.perf_counter() - tick) / CAPTIONS

    points = []
    for (sampler, steps), seed in [(s, 1000) for s in SETTINGS] + [(("euler", 25), 5000)]:
        generated, seconds = images(sampler, steps, seed)
        pixels = (generated * 255).round()  # what a PNG keeps
        accuracy = retrieval(net, pixels, captions, truth)
        point = {"sampler": sampler, "steps": steps, "seeds_from": seed,
                 "fid_emoji_features": fid(pixels / 255), "retrieval_top1": accuracy[1],
                 "retrieval_top5": accuracy[5], "seconds_per_image": seconds}  # fmt: skip
        points.append(point)
        print(json.dumps(point), flush=True)
    reference, repeat = points[0], points[-1]
    noise = {
        "fid": abs(reference["fid_emoji_features"] - repeat["fid_emoji_features"]),
        "top5": abs(reference["retrieval_top5"] - repeat["retrieval_top5"]),
    }
    matching = [
        p
        for p in points[:-1]
        if p["fid_emoji_features"] <= reference["fid_emoji_features"] + noise["fid"]
        and p["retrieval_top5"] >= reference["retrieval_top5"] - noise["top5"]
    ]
    cheapest = min(matching, key=lambda p: p["steps"] * 1000 + p["seconds_per_image"])
    result = {
        "points": points,
        "noise_between_seeds": noise,
        "cheapest_matching_25_euler": cheapest,
        "captions": CAPTIONS,
        "note": "FID in the bundled evaluator's emoji features; 192 images per point",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "steps.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "points"}, indent=2))
    plot(points[:-1], reference, noise, RESULTS / "steps.png")


def plot(points: list[dict], reference: dict, noise: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for sampler in sorted({p["sampler"] for p in points}):
        mine = sorted((p for p in points if p["sampler"] == sampler), key=lambda p: p["steps"])
        steps = [p["steps"] for p in mine]
        axes[0].plot(steps, [p["fid_emoji_features"] for p in mine], "o-", label=sampler)
        axes[1].plot(steps, [p["retrieval_top5"] for p in mine], "o-", label=sampler)
    for ax, key, band in ((axes[0], "fid_emoji_features", noise["fid"]),
                          (axes[1], "retrieval_top5", noise["top5"])):  # fmt: skip
        value = reference[key]
        ax.axhspan(value - band, value + band, color="#ddd", label="25 euler +- seed noise")
        ax.set_xlabel("steps")
    axes[0].set_ylabel("FID (emoji features; lower is better)")
    axes[1].set_ylabel("caption retrieval top-5")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
