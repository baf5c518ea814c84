"""Our call against diffusers' call on the same work: alternating runs, medians, ratio.

The machines are shared and noisy, so both sides run in one process, turn about, and
only the ratio of medians is reported, with the largest pixel difference between the two
outputs (a like-for-like check: a fast wrong answer is not a win).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def compare(
    ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor], runs: int
) -> dict:
    diff = (ours() - theirs()).abs().max().item()  # also a warm-up of both
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for _ in range(runs):
        for name, fn in (("ours", ours), ("diffusers", theirs)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "runs": runs,
        "median_s": medians,
        "times_s": times,
        "ratio_ours_over_diffusers": medians["ours"] / medians["diffusers"],
        "max_abs_image_difference": diff,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }


def save(results: list[dict], out: Path) -> None:
    """Write the results as JSON and print one line per image size."""
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        print(
            f"{r['image_size']}px: ours {r['median_s']['ours']:.3f}s, diffusers "
            f"{r['median_s']['diffusers']:.3f}s, ratio {r['ratio_ours_over_diffusers']:.3f}, "
            f"max |diff| {r['max_abs_image_difference']:.1e}"
        )
