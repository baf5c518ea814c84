"""Generation on a busy machine: thread count and OpenMP wait policy (issue 15, item 5).

Per-image time of warm 64x64 generations with the bundled pair (25 Euler steps), in a
worker process, under each OpenMP setting:

- ``default``: what torch does when nothing is set (libgomp's threads spin while they
  wait for work);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep; what pangu-draw sets
  unless the user set it);
- ``1 thread``: ``OMP_NUM_THREADS=1``;

and each setting on a quiet machine, with one busy core beside it (a Python busy loop),
and with two workers side by side (two generations at once). Ratios: busy against the
same setting's quiet time; side by side against the same two images made in turn; each
setting's quiet time against the default's. All in one run.

    .venv/bin/python benchmarks/bench_threads.py     # writes benchmarks/results/threads.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
IMAGES = 4
SETTINGS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}


def worker() -> None:
    """Print the median seconds per warm image."""
    import statistics

    from pangudraw.experts import load_expert
    from pangudraw.pipelines import generate
    from pangudraw.zoo import MODELS

    structure, texture = load_expert(MODELS / "structure"), load_expert(MODELS / "texture")
    generate(structure, texture, "red apple", seed=0)  # warm-up
    times = []
    for seed in range(IMAGES):
        tick = time.perf_counter()
        generate(structure, texture, "red apple", seed=seed)
        times.append(time.perf_counter() - tick)
    print(statistics.median(times))


def environment(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    return env | SETTINGS[setting]


def run_workers(setting: str, count: int) -> list[float]:
    command = [sys.executable, __file__, "--worker"]
    procs = [
        subprocess.Popen(command, env=environment(setting), stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    report = {"images": IMAGES, "cores": os.cpu_count(), "runs": {}}
    for setting in SETTINGS:
        quiet = run_workers(setting, 1)[0]
        busy_loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            busy = run_workers(setting, 1)[0]
        finally:
            busy_loop.kill()
            busy_loop.wait()
        pair = run_workers(setting, 2)
        report["runs"][setting] = {"quiet_s": quiet, "busy_core_s": busy, "side_by_side_s": pair}
        print(setting, json.dumps(report["runs"][setting]), flush=True)
    base = report["runs"]["default"]["quiet_s"]
    for run in report["runs"].values():
        run["busy_vs_own_quiet"] = run["busy_core_s"] / run["quiet_s"]
        run["quiet_vs_default_quiet"] = run["quiet_s"] / base
        run["side_by_side_vs_in_turn"] = max(run["side_by_side_s"]) / (2 * run["quiet_s"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threads.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    worker() if "--worker" in sys.argv else main()
