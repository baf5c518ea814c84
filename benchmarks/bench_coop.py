"""Coop-Diffusion cost and noise policies.

1. Speed: two experts in different latent spaces (4 channels at 1/2 and 8 channels at 1/4,
   both 64 px native), both active over the whole trajectory, canvas in the first space.
   The wall time of the Coop loop against the time the two UNets themselves took in the
   same run (forward hooks), and the same ratio for one expert alone (the loop's overhead
   without bridging). Peak RSS of the process.
2. Noise policies (carry vs resample), measured where the answer is known: Gaussian data
   with exact denoisers, one in pixel space and one in a pixel-unshuffle space (bridged),
   fused 50/50 or the folded one alone off the canvas. The sample standard deviation
   should be tau.

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/bench_coop.py [--runs 5]

Writes benchmarks/results/coop.json and benchmarks/results/coop.png.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pangudraw.bridge import Site
from pangudraw.cli.shared import quiet_libraries
from pangudraw.coop import Participant, make_scheduler, sample
from pangudraw.families import Conditioning
from pangudraw.loading.models import load_expert

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the tiny test models
from fixtures.tiny_models import gaussian_expert, tiny_sd  # noqa: E402

RESULTS = Path(__file__).parent / "results"


class NetworkClock:
    """Sums the time spent inside a module's forward calls."""

    def __init__(self, module: torch.nn.Module):
        self.total = 0.0
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)

    def _start(self, *_):
        self._t = time.perf_counter()

    def _stop(self, *_):
        self.total += time.perf_counter() - self._t


def speed(runs: int, steps: int) -> dict:
    root = Path(tempfile.mkdtemp())
    tiny_sd(root / "a", sample_size=32)
    tiny_sd(root / "b", seed=3, vae_seed=7, latent_channels=8, vae_blocks=3, sample_size=16)
    a, b = load_expert(root / "a"), load_expert(root / "b")
    clocks = {"a": NetworkClock(a.network), "b": NetworkClock(b.network)}
    canvas = Site(a.space, (64, 64))
    conds = {k: e.encode_prompt(["a red apple"], None, 5.0) for k, e in (("a", a), ("b", b))}

    def run(pair: bool, k: int = 1) -> tuple[float, float]:
        participants = [Participant(a, conds["a"], 5.0, 0.5)]
        if pair:
            participants.append(Participant(b, conds["b"], 5.0, 0.5, size=(64, 64)))
        for clock in clocks.values():
            clock.total = 0.0
        noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        scheduler = make_scheduler("euler", a.scheduler_config)
        start = time.perf_counter()
        with torch.inference_mode():
            sample(participants, scheduler, noise, steps, canvas=canvas, bridge_every=k)
        wall = time.perf_counter() - start
        return wall, sum(c.total for c in clocks.values())

    run(True), run(False)  # warm-up
    rows = {"two_spaces": [], "one_expert": [], "bridge_every_2": [], "bridge_every_4": []}
    for _ in range(runs):
        rows["two_spaces"].append(run(True))
        rows["one_expert"].append(run(False))
        rows["bridge_every_2"].append(run(True, 2))
        rows["bridge_every_4"].append(run(True, 4))

    exact_wall = statistics.median(w for w, _ in rows["two_spaces"])
    result = {"steps": steps, "runs": runs, "image": "64x64"}
    for name, pairs in rows.items():
        walls = [w for w, _ in pairs]
        result[name] = {
            "wall_s": statistics.median(walls),
            "network_s": statistics.median(n for _, n in pairs),
            "ratio_wall_over_network": statistics.median(w / n for w, n in pairs),
            "wall_over_exact_coop_wall": statistics.median(walls) / exact_wall,
        }
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def noise_policies(steps_list: list[int]) -> dict:
    mu, tau = 0.1, 0.3
    pixels = gaussian_expert(mu, tau, name="pixels")
    folded = gaussian_expert(mu, tau, unshuffle=2, name="folded")
    canvas = Site(pixels.space, (16, 16))
    cond = Conditioning(torch.zeros(16, 1, 1), guided=False)
    setups = {
        "fused 50/50": lambda: [
            Participant(pixels, cond, weight=0.5),
            Participant(folded, cond, weight=0.5),
        ],
        "off-canvas alone": lambda: [Participant(folded, cond)],
        "one expert (reference)": lambda: [Participant(pixels, cond)],
    }
    cases = [(name, policy, 1) for name in setups for policy in ("carry", "resample")]
    cases += [(name, "carry", k) for name in list(setups)[:2] for k in (2, 4)]
    rows = []
    for name, policy, k in cases:
        for steps in steps_list:
            noise = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
            scheduler = make_scheduler("euler", pixels.scheduler_config)
            generator = torch.Generator().manual_seed(1)
            out = sample(
                setups[name](),
                scheduler,
                noise,
                steps,
                generator,
                canvas=canvas,
                noise_policy=policy,
                bridge_every=k,
            )
            rows.append(
                {
                    "setup": name,
                    "policy": policy,
                    "bridge_every": k,
                    "steps": steps,
                    "std": out.std().item(),
                    "mean": out.mean().item(),
                }
            )
    return {"mu": mu, "tau": tau, "sampler": "euler", "samples": 16 * 3 * 16 * 16, "rows": rows}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    s = result["speed"]
    names = ["one expert", "two latent spaces"]
    nets = [s["one_expert"]["network_s"], s["two_spaces"]["network_s"]]
    walls = [s["one_expert"]["wall_s"], s["two_spaces"]["wall_s"]]
    left.bar(names, nets, label="UNet forward")
    left.bar(
        names,
        [w - n for w, n in zip(walls, nets)],
        bottom=nets,
        label="everything else (bridges, scheduler, Python)",
    )
    left.set_ylabel(f"seconds per image ({s['steps']} steps, 64x64)")
    left.set_title("Coop cost: wall time split")
    left.legend()
    policies = result["noise_policies"]
    for setup in ("fused 50/50", "off-canvas alone", "one expert (reference)"):
        for policy, style in (("carry", "-o"), ("resample", "--s")):
            rows = [
                r
                for r in policies["rows"]
                if r["setup"] == setup and r["policy"] == policy and r["bridge_every"] == 1
            ]
            if setup.startswith("one") and policy == "resample":
                continue
            right.plot(
                [r["steps"] for r in rows],
                [r["std"] for r in rows],
                style,
                label=f"{setup}, {policy}" if not setup.startswith("one") else setup,
            )
    right.axhline(policies["tau"], color="k", lw=0.8, label="truth (tau)")
    right.set_ylim(top=policies["tau"] * 1.04)
    right.set_xscale("log")
    right.set_xlabel("steps")
    right.set_ylabel("sample std")
    right.set_title("Gaussian data, exact experts: std of samples")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    quiet_libraries()
    result = {
        "speed": speed(args.runs, args.steps),
        "noise_policies": noise_policies([10, 25, 50, 100, 200]),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "coop.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "coop.png")
    s = result["speed"]
    print(
        f"two spaces: wall {s['two_spaces']['wall_s']:.3f}s, UNets "
        f"{s['two_spaces']['network_s']:.3f}s, ratio "
        f"{s['two_spaces']['ratio_wall_over_network']:.3f}; one expert ratio "
        f"{s['one_expert']['ratio_wall_over_network']:.3f}; peak RSS {s['peak_rss_mib']:.0f} MiB"
    )
    for k in (2, 4):
        row = s[f"bridge_every_{k}"]
        print(
            f"bridge every {k}: wall {row['wall_s']:.3f}s = "
            f"{row['wall_over_exact_coop_wall']:.3f} of the exact Coop loop's"
        )
    for r in result["noise_policies"]["rows"]:
        if r["steps"] in (25, 200):
            print(
                f"{r['setup']:>24} {r['policy']:>8} k={r['bridge_every']} {r['steps']:>4} "
                f"steps: std {r['std']:.4f}"
            )


if __name__ == "__main__":
    main()
