"""PanGu-Draw's claim (a): time-decoupled training reaches the monolithic model's quality
with less training compute. FID and caption retrieval against training FLOPs.

The images come from snapshots taken during the zoo's GPU training (scripts/device/
zoo_gpu.sh, eval_snapshots.py): at each point, 192 captions drawn from the training data
with a fixed seed, the same seeds, 25 dpmpp_2m steps, guidance 4; the structure snapshot k
paired with the texture snapshot k (their FLOPs add) against the monolithic snapshot. They
are stored with the zoo's training records in zoo/snapshot_images/*.npz. The reference for
FID is the whole Noto set (3,786 images; built with `pangu-draw data emoji` when missing).
FID is in the bundled evaluator's emoji features, not Inception.

    .venv/bin/python benchmarks/bench_decoupled_quality.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data/emoji-google"
RESULTS = Path(__file__).parent / "results"
SNAPSHOTS = ROOT / "zoo/snapshot_images"  # decoupled.npz, full.npz: made on the GPU


def emoji_data() -> Path:
    """The Noto emoji set, rendered from the registry package when missing."""
    if not (DATA / "metadata.jsonl").is_file():
        subprocess.run(
            [str(Path(sys.executable).parent / "pangu-draw"), "data", "emoji", "--style",
             "google", "--out", str(DATA)], check=True,
        )  # fmt: skip
    return DATA


def real_images() -> tuple[torch.Tensor, list[str]]:
    from pangudraw.train.config import TrainConfig
    from pangudraw.train.stagedata import load_pool

    emoji_data()
    config = TrainConfig(stage="full", data=str(DATA), output="", resolution=64, min_size=64)
    pool = load_pool(config)
    texts = [json.loads(r)["text"] for r in (DATA / "metadata.jsonl").read_text().splitlines()]
    return pool.pixels, texts


def crossing(flops: np.ndarray, fid: np.ndarray, target: float) -> float | None:
    """The first FLOPs at which the curve reaches ``target`` (linear between points)."""
    from pangudraw.evaluate.stats import first_reach

    return first_reach(list(flops), list(fid), target)


def main() -> None:
    from pangudraw.evaluate.features import caption_embeddings, load_evaluator
    from pangudraw.evaluate.fid import FeatureExtractor, fid_against
    from pangudraw.evaluate.report import retrieval
    from pangudraw.zoo import MODELS

    real, texts = real_images()
    net = load_evaluator()
    extractor = FeatureExtractor(net, net.num_features, 64)
    fid = fid_against(real.float() / 255, extractor)  # reference features computed once
    curves = {}
    for label in ("decoupled", "full"):
        data = np.load(SNAPSHOTS / f"{label}.npz")
        prompts = [texts[i] for i in data["caption_index"]]
        distinct = sorted(set(prompts))
        captions = caption_embeddings(distinct)
        truth = torch.tensor([distinct.index(p) for p in prompts])
        points = []
        for images, steps, flops in zip(data["images"], data["steps"], data["flops"]):
            batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            accuracy = retrieval(net, batch, captions, truth)
            points.append({
                "steps": [int(s) for s in np.atleast_1d(steps)],
                "training_flops": float(flops),
                "fid_emoji_features": fid(batch.float() / 255),
                "retrieval_top1": accuracy[1],
                "retrieval_top5": accuracy[5],
            })  # fmt: skip
            print(label, points[-1], flush=True)
        curves[label] = points

    # The floor: 192 real emoji (the same captions' images) against the whole set.
    index = np.load(SNAPSHOTS / "full.npz")["caption_index"]
    real_sample = real[torch.from_numpy(index)]
    distinct = sorted({texts[i] for i in index})
    truth = torch.tensor([distinct.index(texts[i]) for i in index])
    floor = {
        "fid_emoji_features": fid(real_sample.float() / 255),
        "retrieval_top5": retrieval(net, real_sample, caption_embeddings(distinct), truth)[5],
    }
    print("real images", floor, flush=True)
    full_final = curves["full"][-1]
    dec = curves["decoupled"]
    reach = crossing(
        np.array([p["training_flops"] for p in dec]),
        np.array([p["fid_emoji_features"] for p in dec]),
        full_final["fid_emoji_features"],
    )
    usable = {
        name: json.loads((MODELS / name / "resources.json").read_text())["data"]["usable"]
        for name in ("structure", "texture", "full")
    }
    result = {
        "curves": curves,
        "monolithic_final_fid": full_final["fid_emoji_features"],
        "monolithic_final_flops": full_final["training_flops"],
        "decoupled_flops_to_reach_it": reach,
        "flops_ratio_decoupled_over_monolithic": None
        if reach is None
        else reach / full_final["training_flops"],
        "usable_images": usable,
        "real_images_same_captions": floor,
        "samples_per_point": int(len(data["caption_index"])),
        "reference_images": len(real),
        "note": "FID in the bundled evaluator's emoji features (domain-trained, not Inception); "
        "192 samples per point, so compare points with each other, not with published FIDs.",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "curves"}, indent=2))
    plot(curves, floor, RESULTS / "training_quality.png")


def plot(curves: dict, floor: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    style = {"decoupled": ("structure + texture", "#c44"), "full": ("monolithic", "#48c")}
    for label, points in curves.items():
        name, colour = style[label]
        x = [p["training_flops"] for p in points]
        axes[0].plot(x, [p["fid_emoji_features"] for p in points], "o-", c=colour, label=name)
        axes[1].plot(x, [p["retrieval_top5"] for p in points], "o-", c=colour, label=name)
    axes[0].axhline(floor["fid_emoji_features"], ls="--", c="k", lw=1, label="real images")
    axes[1].axhline(floor["retrieval_top5"], ls="--", c="k", lw=1, label="real images")
    axes[0].set_ylabel("FID (emoji features, lower is better)")
    axes[1].set_ylabel("caption retrieval top-5 (of 192)")
    for ax in axes:
        ax.set_xlabel("training FLOPs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
