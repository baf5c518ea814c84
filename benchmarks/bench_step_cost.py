"""What makes a step cheaper on the CPU, one change at a time (issue 15, item 2).

Warm seconds per 64x64 image of the bundled pair (15 Euler steps, the default), one image
at a time and in batches of 8, each variant in its own process with
``OMP_WAIT_POLICY=PASSIVE`` (pangu-draw's setting), 3 alternating rounds, medians:

- ``default layout``: the networks as diffusers stores them (contiguous NCHW);
- ``channels_last``: the UNets and VAEs in channels-last layout (what load_expert does);
- ``no oneDNN``: ``torch.backends.mkldnn.enabled = False``.

    .venv/bin/python benchmarks/bench_step_cost.py   # writes results/step_cost.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("default layout", "channels_last", "no oneDNN")
ROUNDS = 3


def worker(variant: str) -> None:
    import torch

    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate
    from pangudraw.zoo import MODELS

    experts = [load_expert(MODELS / "structure"), load_expert(MODELS / "texture")]
    layout = torch.channels_last if variant == "channels_last" else torch.contiguous_format
    for expert in experts:
        expert.network.to(memory_format=layout)
        if expert.space.vae is not None:
            expert.space.vae.to(memory_format=layout)
    torch.backends.mkldnn.enabled = variant != "no oneDNN"

    def per_image(batch: int) -> float:
        for _ in range(2):  # warm-up
            generate(*experts, ["red apple"] * batch, num_inference_steps=15, num_images=batch)
        times = []
        for seed in range(4 if batch == 1 else 2):
            tick = time.perf_counter()
            generate(*experts, ["red apple"] * batch, num_inference_steps=15, seed=seed,
                     num_images=batch)  # fmt: skip
            times.append((time.perf_counter() - tick) / batch)
        return statistics.median(times)

    print(json.dumps({"one_at_a_time_s": per_image(1), "batch_of_8_s": per_image(8)}))


def main() -> None:
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
    runs = {variant: [] for variant in VARIANTS}
    for _ in range(ROUNDS):  # alternating, so that machine noise hits every variant
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--worker", variant], env=env,
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
            print(variant, runs[variant][-1], flush=True)
    report = {
        variant: {key: statistics.median(r[key] for r in results) for key in results[0]}
        | {"runs": results}
        for variant, results in runs.items()
    }
    print(json.dumps({v: {k: x for k, x in r.items() if k != "runs"} for v, r in report.items()}))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_cost.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    worker(sys.argv[2]) if "--worker" in sys.argv else main()
