"""Peak memory of a structure + texture pair with and without ``--offload window``, CPU.

Two SD-style experts with large random-weight UNets (about 360 and 250 MiB; the script
builds them in a temporary folder) share a tiny VAE and text encoder. Each case runs in its
own process, so each peak is its own: the larger expert alone (what one expert costs:
weights plus the run's activations), the pair without offloading, the pair with
``window``. Peaks are the process's resident set (VmHWM) above what it held before any
model loaded, for loading and for the run apart (the kernel's peak is reset between them).

Goal: the pair with ``window`` at most 1.15x the larger expert alone.
Writes benchmarks/results/memory.json.

    .venv/bin/python benchmarks/bench_memory.py [--steps 6] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CASES = ("larger alone", "pair", "pair, window")
UNETS = {  # block widths, layers per block: about 360 MiB and 250 MiB of float32
    "structure": ((128, 256, 512), 2),
    "texture": ((160, 320, 480), 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), args.child[1], args.steps, args.size)
    folder = Path(tempfile.mkdtemp(prefix="pangu-bench-memory-"))
    weights = build(folder)
    rows = []
    for case in CASES:
        cmd = [sys.executable, __file__, "--child", str(folder), case]
        cmd += ["--steps", str(args.steps), "--size", str(args.size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append({"case": case, **json.loads(out.strip().splitlines()[-1])})
    alone = rows[0]["peak_mib"]
    for row in rows:
        row["over_larger_alone"] = row["peak_mib"] / alone
        print(
            f"{row['case']:>14}: peak {row['peak_mib']:7.1f} MiB (load {row['load_mib']:7.1f}, "
            f"run {row['run_mib']:7.1f}), {row['over_larger_alone']:.2f}x the larger alone"
        )
    result = {
        "weights_mib": weights,
        "steps": args.steps,
        "size": args.size,
        "cases": rows,
        "goal": "pair with window <= 1.15x the larger expert alone",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(result, indent=2) + "\n")


def build(folder: Path) -> dict:
    """Two tiny SD pipelines sharing their VAE and text encoder, with large UNets."""
    import torch
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from fixtures.tiny_models import tiny_sd

    sizes = {}
    for seed, (name, (widths, layers)) in enumerate(UNETS.items()):
        tiny_sd(folder / name, seed=seed)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=widths,
            layers_per_block=layers,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        unet.save_pretrained(folder / name / "unet")
        sizes[name] = sum(p.numel() * p.element_size() for p in unet.parameters()) / 2**20
    return sizes


def child(folder: Path, case: str, steps: int, size: int) -> None:
    from pangudraw.cli.shared import quiet_libraries
    from pangudraw.loading.models import ModelCache
    from pangudraw.pipelines import generate

    quiet_libraries()
    base = _status("VmRSS")
    _reset_peak()
    models = ModelCache(offload="window" if case == "pair, window" else "none")
    structure = models.get(folder / "structure")
    texture = None if case == "larger alone" else models.get(folder / "texture")
    load = _status("VmHWM")
    _reset_peak()
    generate(structure, texture, "a", num_inference_steps=steps, width=size, height=size)
    run = _status("VmHWM")
    mib = {"load_mib": (load - base) / 1024, "run_mib": (run - base) / 1024}
    print(json.dumps({**mib, "peak_mib": max(mib.values()), "base_mib": base / 1024}))


def _status(key: str) -> int:
    """A /proc/self/status entry in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    """Reset the kernel's peak resident set (VmHWM) to the current one."""
    Path("/proc/self/clear_refs").write_text("5")


if __name__ == "__main__":
    main()
