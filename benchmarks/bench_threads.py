"""Generation on a busy machine: thread count and OpenMP wait policy (issue 15, item 5).

Per-image time of warm 64x64 generations with the bundled pair (25 Euler steps), one at a
time and in batches of 8, in a worker process, under each OpenMP setting:

- ``default``: what torch does when nothing is set (libgomp's threads spin while they
  wait for work);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep; what `pangu-draw`
  sets unless the user set ``OMP_WAIT_POLICY``);
- ``1 thread``: ``OMP_NUM_THREADS=1``;
- ``spin 10k`` (only when named): ``GOMP_SPINCOUNT=10000``, a shorter spin;

and each setting on a quiet machine, with one busy core beside it (a Python busy loop),
and with two workers side by side (two generations at once). Ratios: busy against the
same setting's quiet time; side by side against the same two images made in turn; each
setting's quiet time against the default's. All in one run.

    .venv/bin/python benchmarks/bench_threads.py     # writes benchmarks/results/threads.json
    .venv/bin/python benchmarks/bench_threads.py "spin 10k" default   # other settings
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
BATCH = 8
ONLY = [a for a in sys.argv[1:] if not a.startswith("-")]
SETTINGS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "spin 10k": {"GOMP_SPINCOUNT": "10000"},
}
RUN_BY_DEFAULT = ("default", "passive", "1 thread")


def worker() -> None:
    """Print the median seconds per warm image, one at a time and in batches of 8."""
    import statistics

    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate
    from pangudraw.zoo import MODELS

    structure, texture = load_expert(MODELS / "structure"), load_expert(MODELS / "texture")
    result = []
    for batch in (1, BATCH):
        generate(structure, texture, ["red apple"] * batch, seed=0, num_images=batch)  # warm
        times = []
        for seed in range(IMAGES if batch == 1 else 2):
            tick = time.perf_counter()
            generate(structure, texture, ["red apple"] * batch, seed=seed, num_images=batch)
            times.append((time.perf_counter() - tick) / batch)
        result.append(statistics.median(times))
    print(*result)


def environment(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    return env | SETTINGS[setting]


def run_workers(setting: str, count: int) -> list[list[float]]:
    """Per worker: [seconds per image one at a time, in batches of 8]."""
    command = [sys.executable, __file__, "--worker"]
    procs = [
        subprocess.Popen(command, env=environment(setting), stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    return [[float(x) for x in p.communicate()[0].split()[-2:]] for p in procs]


def main() -> None:
    report = {"images": IMAGES, "cores": os.cpu_count(), "runs": {}}
    for setting in ONLY or RUN_BY_DEFAULT:
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
    base = report["runs"].get("default", {}).get("quiet_s")
    for run in report["runs"].values():
        for i, name in enumerate(("single", f"batch{BATCH}")):
            quiet = run["quiet_s"][i]
            run[f"{name}_busy_vs_own_quiet"] = run["busy_core_s"][i] / quiet
            if base:
                run[f"{name}_quiet_vs_default_quiet"] = quiet / base[i]
                run[f"{name}_busy_vs_default_quiet"] = run["busy_core_s"][i] / base[i]
            pair = max(w[i] for w in run["side_by_side_s"])
            run[f"{name}_side_by_side_vs_in_turn"] = pair / (2 * quiet)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threads.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    worker() if "--worker" in sys.argv else main()
