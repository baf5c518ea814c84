"""Training cost: the structure stage at low resolution vs the monolithic stage at high.

Same UNet architecture, same latent space (pixel-unshuffle 2: 12 channels at 1/2), same
data (generated shapes), batch 16, one process: the structure stage at 32 px on
t in [500, 1000) against the monolithic ("full") stage at 64 px on [0, 1000). Alternating
chunks of steps in one run; images/s and FLOPs per image (torch's flop counter, forward +
backward).

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/bench_training.py [--chunks 6 --steps 5]

Writes benchmarks/results/training.json and benchmarks/results/training.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pangudraw.cli.shared import quiet_libraries
from pangudraw.train.accounting import measure_flops
from pangudraw.train.build import build
from pangudraw.train.config import TrainConfig
from pangudraw.train.loop import train_step

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the tiny test models
from fixtures.tiny_models import mini_dataset, tiny_sd  # noqa: E402

RESULTS = Path(__file__).parent / "results"
UNET = {"block_out_channels": [32, 64], "layers_per_block": 1, "attention_head_dim": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="steps per chunk")
    args = parser.parse_args()
    quiet_libraries()
    root = Path(tempfile.mkdtemp())
    mini_dataset(root / "data", n=64, size=64, small=0, broken=0)
    tiny_sd(root / "text")
    common = dict(
        data=str(root / "data"),
        text_encoder=str(root / "text"),
        batch_size=16,
        pixel_unshuffle=2,
        unet=UNET,
        max_steps=10**6,
    )
    runs = {
        "structure (32 px, t in [500, 1000))": build(
            TrainConfig(stage="structure", output=str(root / "s"), resolution=32, **common)
        ),
        "monolithic (64 px, t in [0, 1000))": build(
            TrainConfig(stage="full", output=str(root / "f"), resolution=64, **common)
        ),
    }
    rates = {name: [] for name in runs}
    flops = {name: measure_flops(run) for name, run in runs.items()}
    step = 0
    for _ in range(args.chunks):
        for name, run in runs.items():
            start = time.perf_counter()
            for k in range(args.steps):
                train_step(run, step + k)
            rates[name].append(16 * args.steps / (time.perf_counter() - start))
        step += args.steps
    rows = {
        name: {
            "images_per_s": statistics.median(rates[name]),
            "flops_per_image": flops[name],
            "parameters": sum(p.numel() for p in runs[name].model.parameters()),
        }
        for name in runs
    }
    (s, f) = rows.values()
    result = {
        "rows": rows,
        "chunks": args.chunks,
        "steps_per_chunk": args.steps,
        "batch_size": 16,
        "throughput_ratio_structure_over_monolithic": s["images_per_s"] / f["images_per_s"],
        "flops_ratio_structure_over_monolithic": s["flops_per_image"] / f["flops_per_image"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "training.png")
    for name, row in rows.items():
        print(
            f"{name}: {row['images_per_s']:.1f} images/s, "
            f"{row['flops_per_image'] / 1e9:.2f} GFLOP/image, {row['parameters']} parameters"
        )
    throughput = result["throughput_ratio_structure_over_monolithic"]
    flops_ratio = result["flops_ratio_structure_over_monolithic"]
    print(f"structure / monolithic: throughput x{throughput:.2f}, FLOPs x{flops_ratio:.3f}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["rows"])
    labels = [n.replace(" (", "\n(") for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.bar(labels, [result["rows"][n]["images_per_s"] for n in names], color=["C0", "C1"])
    left.set_ylabel("training images / s (2-core CPU)")
    right.bar(
        labels, [result["rows"][n]["flops_per_image"] / 1e9 for n in names], color=["C0", "C1"]
    )
    right.set_ylabel("GFLOP per image (fwd + bwd)")
    fig.suptitle("Same UNet: structure stage at low resolution vs monolithic")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
