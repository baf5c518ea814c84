"""Cold and warm `pangu-draw generate` on the bundled models (issue 5's benchmark).

Cold: process start to PNG written, `pangu-draw generate "red apple"` (64x64, default steps,
the zoo's structure + texture), against the floor of any diffusers-based tool,
`python -c "import torch; from diffusers import UNet2DConditionModel, AutoencoderKL; from
transformers import BertModel"` (diffusers' model classes import torch._dynamo), and the
older, lighter `import torch, diffusers, transformers`; runs alternate so that machine
noise hits all. Warm: per-image time inside one
process once the models are loaded. Peak RSS of the cold process.

    .venv/bin/python benchmarks/bench_cli.py          # writes benchmarks/results/cli.{json,png}
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent
RUNS = 5


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tick = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - tick
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(after, before) / 1024  # ru_maxrss of children: the largest so far


def main() -> None:
    old_floor = [sys.executable, "-c", "import torch, diffusers, transformers"]
    # the real floor of a diffusers-based tool: diffusers' model classes import torch._dynamo
    floor = "import torch; from diffusers import UNet2DConditionModel, AutoencoderKL; "
    floor += "from transformers import BertModel"
    imports = [sys.executable, "-c", floor]
    out = Path(tempfile.mkdtemp()) / "apple.png"
    cold = [str(BIN / "pangu-draw"), "generate", "red apple", "--seed", "0", "-o", str(out)]
    timed(cold)  # file-system caches warm for both
    import_times, old_times, cold_times, rss = [], [], [], 0.0
    for _ in range(RUNS):
        old_times.append(timed(old_floor)[0])
        import_times.append(timed(imports)[0])
        wall, peak = timed(cold)
        cold_times.append(wall)
        rss = max(rss, peak)

    from pangudraw.loading.models import load_expert
    from pangudraw.options import DEFAULT_STEPS
    from pangudraw.pipelines import generate
    from pangudraw.zoo import MODELS

    structure, texture = load_expert(MODELS / "structure"), load_expert(MODELS / "texture")
    generate(
        structure,
        texture,
        "red apple",
        num_inference_steps=DEFAULT_STEPS,
        guidance_scale=7.0,
        seed=0,
    )  # warm-up
    warm = []
    for seed in range(RUNS):
        tick = time.perf_counter()
        generate(
            structure,
            texture,
            "red apple",
            num_inference_steps=DEFAULT_STEPS,
            guidance_scale=7.0,
            seed=seed,
        )
        warm.append(time.perf_counter() - tick)

    result = {
        "import_torch_diffusers_transformers_s": statistics.median(old_times),
        "floor_s": statistics.median(import_times),
        "cold_generate_s": statistics.median(cold_times),
        "cold_over_imports": statistics.median(cold_times) / statistics.median(old_times),
        "cold_over_floor": statistics.median(cold_times) / statistics.median(import_times),
        "warm_per_image_s": statistics.median(warm),
        "cold_peak_rss_mib": round(rss, 1),
        "runs": RUNS,
        "goals": {"cold_over_floor": 1.3, "warm_per_image_s": 0.5, "cold_peak_rss_mib": 1024},
        "settings": f"64x64, {DEFAULT_STEPS} euler steps (the default), guidance 7, "
        "structure + texture from the zoo",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    labels = ["floor: torch + diffusers'\nmodel classes + BertModel",
              "cold generate\n(process to PNG)", "warm, per image"]  # fmt: skip
    values = [result["floor_s"], result["cold_generate_s"], result["warm_per_image_s"]]
    ax.barh(labels, values, color=["#999", "#c44", "#48c"])
    ax.axvline(1.3 * values[0], ls="--", c="k", lw=1, label="goal for cold: 1.3x the floor")
    ax.set_xlabel("seconds (median of 5)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "cli.png", dpi=120)


if __name__ == "__main__":
    main()
