"""Images from every training snapshot of structure + texture and of the monolithic model.

For the training benchmark (issue 6): FID and caption retrieval against training FLOPs.
Each point generates the same N captions (drawn from the training data with a fixed seed)
with the same seeds; the structure snapshot k is paired with the texture snapshot k, and
their FLOPs add. Writes OUT/decoupled.npz and OUT/full.npz (uint8 images, steps, FLOPs,
caption indices), which benchmarks/bench_decoupled_quality.py turns into metrics.

    python scripts/device/train.py ... (the runs) ; python scripts/device/eval_snapshots.py OUT
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

RUNS = Path("runs")
DATA = Path("data/emoji-google")
STEPS, GUIDANCE, SAMPLER = 25, 4.0, "dpmpp_2m"


def snapshots(name: str) -> list[Path]:
    found = sorted((RUNS / name / "snapshots").glob("step-*"))
    final = RUNS / name / "model"
    if (final / "README.md").is_file():
        steps = json.loads((final / "resources.json").read_text())["optimizer_steps"]
        if not found or steps > int(found[-1].name[5:]):
            found.append(final)
    return found


def move(expert, device: str):
    expert.network.to(device)
    if expert.space.vae is not None:
        expert.space.vae.to(device)
    expert.text.encoder.to(device)
    return expert


def figures(folder: Path) -> tuple[int, float]:
    resources = json.loads((folder / "resources.json").read_text())
    return resources["optimizer_steps"], resources["training_flops"]


def main(out: Path, n: int = 256, device: str = "cuda") -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import train  # the trimmed text encoder, as in training

    train.patch()
    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate

    rows = [json.loads(r) for r in (DATA / "metadata.jsonl").read_text().splitlines() if r]
    index = np.random.default_rng(0).choice(len(rows), n, replace=False)
    prompts = [rows[i]["text"] for i in index]
    plans = {
        "decoupled": list(zip(snapshots("structure"), snapshots("texture"))),
        "full": [(f, None) for f in snapshots("full")],
    }
    out.mkdir(parents=True, exist_ok=True)
    done = {label: ([], [], []) for label in plans}
    for k in range(max(len(p) for p in plans.values())):  # both curves grow together
        for label, pairs in plans.items():
            if k >= len(pairs):
                continue
            first, second = pairs[k]
            images, steps, flops = done[label]
            tick = time.perf_counter()
            structure = move(load_expert(first), device)
            texture = None if second is None else move(load_expert(second), device)
            result = generate(
                structure,
                texture,
                prompts,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                sampler=SAMPLER,
                num_images=n,
            )
            images.append((result.images.permute(0, 2, 3, 1) * 255).round().byte().numpy())
            point = [figures(first)] + ([figures(second)] if second else [])
            steps.append([s for s, _ in point])
            flops.append(sum(f for _, f in point))
            where = first.parent.parent.name if first.parent.name == "snapshots" else "model"
            print(f"{label} {where}/{first.name}: {time.perf_counter() - tick:.1f} s", flush=True)
            save(out / f"{label}.npz", images, steps, flops, index)


LIMIT = 15 * 2**20  # the device tool returns files of at most 16 MiB


def save(path: Path, images, steps, flops, index) -> None:
    """Written after every point (a time limit keeps what is done), under the size limit."""
    stack, keep = np.stack(images), len(index)
    while True:
        np.savez_compressed(
            path,
            images=stack[:, :keep],
            steps=np.array(steps),
            flops=np.array(flops),
            caption_index=index[:keep],
            settings=json.dumps({"steps": STEPS, "guidance": GUIDANCE, "sampler": SAMPLER}),
        )
        if path.stat().st_size <= LIMIT or keep <= 16:
            return
        keep = keep * 3 // 4


if __name__ == "__main__":
    default = "cuda" if torch.cuda.is_available() else "cpu"
    main(
        Path(sys.argv[1]),
        int(sys.argv[2]) if len(sys.argv) > 2 else 256,
        sys.argv[3] if len(sys.argv) > 3 else default,
    )
