"""Encoding a prompt once for both experts of the bundled pair (``SDText.shared``) against
once per expert: warm single 64x64 images, 15 Euler steps, alternating runs in one process.

    .venv/bin/python benchmarks/bench_prompt_sharing.py [--runs 20]

Writes benchmarks/results/prompt_sharing.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    structure, texture = load_expert("zoo:structure"), load_expert("zoo:texture")
    shared = structure.text.shared

    def image(share: bool) -> tuple[float, torch.Tensor]:
        structure.text.shared = texture.text.shared = shared if share else None
        tick = time.perf_counter()
        out = generate(structure, texture, "red apple", num_inference_steps=15, seed=0)
        return time.perf_counter() - tick, out.images

    for _ in range(3):  # warm up
        image(True), image(False)
    times = {True: [], False: []}
    for _ in range(args.runs):
        for share in (True, False):
            times[share].append(image(share)[0])
    once, twice = statistics.median(times[True]), statistics.median(times[False])
    result = {
        "encoded_once_s": round(once, 4),
        "encoded_per_expert_s": round(twice, 4),
        "ratio": round(once / twice, 3),
        "same_images": bool(torch.equal(image(True)[1], image(False)[1])),
        "settings": f"bundled pair, 64x64, 15 euler steps, {args.runs} alternating runs, medians",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prompt_sharing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
