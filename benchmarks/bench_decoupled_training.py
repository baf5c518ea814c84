"""Claim (a), measured as the paper sets it up: a LOW-resolution structure model.

The structure generator trains on t in [500, 1000) at half the side of the texture
generator (a quarter of the latent positions, about a quarter of the FLOPs per image), in
the same latent space A; the texture generator trains on t in [0, 500) at full size; the
monolithic baseline trains on t in [0, 1000) at full size. Same data, UNet widths,
optimiser, batch and seed. Snapshots along the way are sampled with identical settings
(the pair hands over at t = 500 through the resolution bridge) and scored with FID in the
bundled evaluator's emoji features and caption retrieval, against measured training FLOPs.

Headline: the FLOPs the pair needs to reach the monolithic model's final FID, divided by
the monolithic model's FLOPs (the paper reports 0.49).

Scales: ``cpu`` (default) fits the 2-core machine (32 px against a 16 px structure
model, small UNets, 1,600 steps, about 15 minutes); ``cpu_long`` is the same for 4,800
steps; ``zoo`` is the bundled models' scale (64 against 32 px) for a GPU. ``--seed 1
--final-only`` scores another seed's final models, ``--pair-curve`` its pair at every
snapshot against the monolithic final point (the FLOPs ratio); ``--part data`` runs the
mixed-resolution pool (half of the emoji kept only at 24 px); ``--split 300`` moves the
hand-over (structure on [300, 1000), texture on [0, 300)) and trains only the pair again:
the monolithic model does not depend on the split and is shared with the t = 500 run.
Training runs in resumable chunks; run the script again to continue. Every finished
point is saved, so an interrupted evaluation resumes too.

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/bench_decoupled_training.py [--scale cpu] [--chunk-minutes 40]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_decoupled_quality import (  # noqa: E402
    DATA,
    RESULTS,
    ROOT,
    crossing,
    emoji_data,
    real_images,
)

# Cheaper structure generators (issue 33): narrower UNets for the 16 px structure stage, at
# 0.52 and 0.25 of the [32, 64] UNet's FLOPs per image (the run measures them again).
CPU_VARIANTS = {
    "half": {"block_out_channels": [24, 40]},
    "quarter": {"block_out_channels": [16, 24]},
}
SCALES = {
    "cpu": {
        "resolution": 32,
        "structure_resolution": 16,
        "unet": {"block_out_channels": [32, 64], "attention_head_dim": 4},
        "batch_size": 32,
        "max_steps": 1600,
        "snapshot_every": 320,
        "samples": 192,
        "structure_variants": CPU_VARIANTS,
    },
    "cpu_long": {  # the cpu scale trained three times longer (about 35 minutes)
        "resolution": 32,
        "structure_resolution": 16,
        "unet": {"block_out_channels": [32, 64], "attention_head_dim": 4},
        "batch_size": 32,
        "max_steps": 4800,
        "snapshot_every": 480,
        "samples": 192,
        "structure_variants": CPU_VARIANTS,
    },
    "smoke": {  # seconds: checks that the script runs end to end, measures nothing
        "resolution": 32,
        "structure_resolution": 16,
        "unet": {"block_out_channels": [32, 64], "attention_head_dim": 4},
        "batch_size": 8,
        "max_steps": 4,
        "snapshot_every": 2,
        "samples": 16,
        "structure_variants": CPU_VARIANTS,
    },
    "zoo": {
        "resolution": 64,
        "structure_resolution": 32,
        "unet": {"block_out_channels": [64, 128, 128], "attention_head_dim": 4},
        "batch_size": 256,
        "max_steps": 3000,
        "snapshot_every": 250,
        "samples": 192,
        # 0.52 and 0.27 of the [64, 128, 128] structure UNet's FLOPs at 32 px
        "structure_variants": {
            "half": {"block_out_channels": [48, 88, 88]},
            "quarter": {"block_out_channels": [32, 64, 64]},
        },
    },
}
STEPS, GUIDANCE, SAMPLER, SPLIT = 25, 4.0, "dpmpp_2m", 500  # SPLIT: the default hand-over
STAGES = ("full", "texture", "structure")


def config_text(
    stage: str, scale: dict, seed: int, run: Path, split: int = SPLIT, variant: str | None = None
) -> str:
    resolution = scale["structure_resolution"] if stage == "structure" else scale["resolution"]
    unet_table = scale["unet"]
    if stage == "structure" and variant is not None:
        unet_table = unet_table | scale["structure_variants"][variant]
    unet = ", ".join(f"{k} = {json.dumps(v)}" for k, v in unet_table.items())
    return "\n".join(
        [
            f'stage = "{stage}"',
            f'data = "{DATA}"',
            f'output = "{run}"',
            f"resolution = {resolution}",
            "min_size = 64",  # the same pool for every stage (item 4 of the issue varies it)
            'vae = "zoo:vae_a"',
            f"seed = {seed}",
            f"t_split = {split}",
            f"batch_size = {scale['batch_size']}",
            "lr = 2e-4",
            f"max_steps = {scale['max_steps']}",
            f"checkpoint_every = {scale['snapshot_every']}",
            f"snapshot_every = {scale['snapshot_every']}",
            'sample_prompts = ["red apple"]',
            f"unet = {{ {unet} }}",
            "",
        ]
    )


def train(
    scale_name: str, seed: int, chunk_minutes: float, split: int = SPLIT, variant: str | None = None
) -> dict:
    """Train the three stages to the end (resuming where a chunk stopped); the run folder
    of each stage. The monolithic model is the same for every split, the texture model the
    same for every structure ``variant``."""
    base = ROOT / "runs" / f"claim_a-{scale_name}-seed{seed}"
    pair = base.with_name(f"claim_a-{scale_name}-split{split}-seed{seed}")
    pair = base if split == SPLIT else pair
    runs = {stage: (base if stage == "full" else pair) / stage for stage in STAGES}
    if variant is not None:
        name = pair.name.replace(f"-seed{seed}", f"-structure_{variant}-seed{seed}")
        runs["structure"] = pair.with_name(name) / "structure"
    emoji_data()
    for stage, run in runs.items():
        at = SPLIT if stage == "full" else split  # the full range either way: one config
        text = config_text(stage, SCALES[scale_name], seed, run, at, variant)
        _train_until_done(run.with_suffix(".toml"), text, run, chunk_minutes)
    return runs


def _train_until_done(config: Path, text: str, run: Path, chunk_minutes: float) -> None:
    pangu = str(Path(sys.executable).parent / "pangu-draw")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    while not (run / "model" / "README.md").is_file():
        resume = ["--resume", "latest"] if list(run.glob("checkpoints/checkpoint-*")) else []
        command = [pangu, "train", str(config), "--max-minutes", str(chunk_minutes), *resume]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)


MIXED = ROOT / "data" / "emoji-google-mixed"
LOW_SIDE = 24  # between the structure stage's side and the texture stage's: only it can use


def mixed_dataset() -> Path:
    """The emoji set with every other image (by a hash of its name) kept only at 24 px: a
    pool where part of the data exists at low resolution alone, as the paper's structure
    stage exploits. Simulated (downsampled copies of real emoji), and said so."""
    import hashlib

    from PIL import Image

    if (MIXED / "metadata.jsonl").is_file():
        return MIXED
    real_images()  # builds the source set when missing
    (MIXED / "images").mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (DATA / "metadata.jsonl").read_text().splitlines()]
    for row in rows:
        low = hashlib.sha256(row["file_name"].encode()).digest()[0] % 2 == 1
        with Image.open(DATA / row["file_name"]) as image:
            image = image.convert("RGB")
            if low:
                image = image.resize((LOW_SIDE, LOW_SIDE), Image.Resampling.LANCZOS)
            image.save(MIXED / row["file_name"])
    (MIXED / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return MIXED


def data_preparation(scale_name: str, seed: int, chunk_minutes: float) -> dict:
    """Item 4: who can use the low-resolution-only images, and does it pay?"""
    scale = SCALES[scale_name]
    data = mixed_dataset()
    root = ROOT / "runs" / f"claim_a-mixed-{scale_name}-seed{seed}"
    side, low_side = scale["resolution"], scale["structure_resolution"]
    runs = {
        "texture": ("texture", side),  # needs images of at least its side: the high-res half
        "structure_all": ("structure", low_side),  # every image
        "structure_high": ("structure", side),  # min_size as the texture stage: high half only
    }
    for name, (stage, min_size) in runs.items():
        text = config_text(stage, scale, seed, root / name).replace(f'"{DATA}"', f'"{data}"')
        text = text.replace("min_size = 64", f"min_size = {min_size}")
        _train_until_done(root / f"{name}.toml", text, root / name, chunk_minutes)
    usable = {
        name: json.loads((root / name / "resources.json").read_text())["data"] for name in runs
    }
    return {"root": str(root.relative_to(ROOT)), "usable": usable}


def points(run: Path, final_only: bool = False) -> list[Path]:
    """Snapshots in step order (those before the last step), then the final model."""
    final = run / "model"
    last = cost(final)[0]
    snaps = sorted((run / "snapshots").glob("step-*"))
    earlier = [p for p in snaps if int(p.name.split("-")[1]) < last]
    return [final] if final_only else [*earlier, final]


def cost(folder: Path) -> tuple[int, float]:
    figures = json.loads((folder / "resources.json").read_text())
    return figures["optimizer_steps"], figures["training_flops"]


class Scorer:
    """Samples a model (or a structure + texture pair) on fixed captions and seeds and
    scores the images: FID in the evaluator's emoji features, caption retrieval."""

    def __init__(self, scale: dict):
        from pangudraw.evaluate.features import caption_embeddings, load_evaluator
        from pangudraw.evaluate.fid import FeatureExtractor, fid_against
        from pangudraw.imageio import resize_pixels

        real, texts = real_images()
        self.n = scale["samples"]
        index = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))[: self.n]
        self.prompts = [texts[i] for i in index]
        distinct = sorted(set(self.prompts))
        self.truth = torch.tensor([distinct.index(p) for p in self.prompts])
        self.net = load_evaluator()
        self.captions = caption_embeddings(distinct)
        # Real images at the generators' resolution, shown to the evaluator at 64 px like
        # the samples: the floor every curve approaches.
        side = scale["resolution"]
        real_low = resize_pixels(resize_pixels(real, (side, side)), (64, 64))
        self.fid = fid_against(
            real_low.float() / 255, FeatureExtractor(self.net, self.net.num_features, 64)
        )
        self.floor = self.score(real_low[index])

    def score(self, images: torch.Tensor) -> dict:
        from pangudraw.evaluate.report import retrieval
        from pangudraw.imageio import resize_pixels

        pixels = resize_pixels(images, (64, 64))
        top = retrieval(self.net, pixels, self.captions, self.truth)
        return {"fid": self.fid(pixels.float() / 255), "top1": top[1], "top5": top[5]}

    def point(self, first: Path, second: Path | None, split: int = SPLIT) -> dict:
        from pangudraw.loading.models import load_expert
        from pangudraw.pipelines import generate

        structure = load_expert(first)
        texture = None if second is None else load_expert(second)
        images = generate(
            structure,
            texture,
            self.prompts,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            sampler=SAMPLER,
            t_split=split,
            num_images=self.n,
            seed=0,
        ).images
        costs = [cost(f) for f in ([first] if second is None else [first, second])]
        return {
            "steps": [s for s, _ in costs],
            "training_flops": sum(f for _, f in costs),
            **self.score((images * 255).round().to(torch.uint8)),
        }


def evaluate(
    runs: dict,
    scorer: Scorer,
    out: Path,
    final_only: bool = False,
    split: int = SPLIT,
    pair_curve: bool = False,
) -> dict:
    """Scores at every point of both curves; saved after each point. ``final_only``: the
    final models only; ``pair_curve``: the pair's whole curve and the monolithic model's
    final point, all the FLOPs ratio needs."""
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("floor", scorer.floor)
    structures = points(runs["structure"], final_only)
    textures = points(runs["texture"], final_only)
    for label, pairs in (
        ("monolithic", [(p, None) for p in points(runs["full"], final_only or pair_curve)]),
        ("decoupled", list(zip(structures, textures))),
    ):
        done = results.setdefault(label, [])
        for first, second in pairs[len(done) :]:
            tick = time.perf_counter()
            done.append(scorer.point(first, second, split))
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(label, done[-1], f"{time.perf_counter() - tick:.0f} s", flush=True)
    return results


def budget_split(
    runs: dict, scorer: Scorer, out: Path, steps: list[int], split: int = SPLIT
) -> dict:
    """Pairs of a structure snapshot and a texture snapshot trained for different numbers
    of steps: how the pair's compute is best shared. Saved after each point."""
    results = json.loads(out.read_text()) if out.is_file() else {"points": []}
    done = {tuple(p["steps"]) for p in results["points"]}

    def folder(stage: str, step: int) -> Path:
        final = runs[stage] / "model"
        return final if cost(final)[0] == step else runs[stage] / "snapshots" / f"step-{step:07d}"

    for s_steps in steps:
        for t_steps in steps:
            if (s_steps, t_steps) in done:
                continue
            point = scorer.point(folder("structure", s_steps), folder("texture", t_steps), split)
            results["points"].append(point)
            out.write_text(json.dumps(results, indent=2) + "\n")
            print("split", point, flush=True)
    return results


def frontier(points: list[dict]) -> list[dict]:
    """The points no cheaper point beats on FID: the best pair for each budget."""
    best, front = float("inf"), []
    for p in sorted(points, key=lambda p: p["training_flops"]):
        if p["fid"] < best:
            best = p["fid"]
            front.append(p)
    return front


def report(results: dict, runs: dict, scale_name: str, split: int = SPLIT) -> dict:
    mono, pair = results["monolithic"], results["decoupled"]
    target = mono[-1]["fid"]
    reach = crossing(
        np.array([p["training_flops"] for p in pair]), np.array([p["fid"] for p in pair]), target
    )
    per_image = {
        stage: json.loads((runs[stage] / "model" / "resources.json").read_text())["flops_per_image"]
        for stage in STAGES
    }
    summary = {
        "scale": scale_name,
        "settings": {"steps": STEPS, "guidance": GUIDANCE, "sampler": SAMPLER, "split": split},
        "monolithic_final_fid": target,
        "monolithic_final_flops": mono[-1]["training_flops"],
        "decoupled_flops_to_reach_it": reach,
        "flops_ratio": None if reach is None else reach / mono[-1]["training_flops"],
        "decoupled_final_fid": pair[-1]["fid"],
        "flops_per_image": per_image,
        "structure_share_of_pair_flops": per_image["structure"]
        / (per_image["structure"] + per_image["texture"]),
    }
    return summary


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, 2, figsize=(9, 3.4))


def _curve(axes, points: list[dict], fmt: str, **style) -> None:
    """FID (left) and retrieval top-5 (right) against training FLOPs."""
    x = [p["training_flops"] for p in points]
    axes[0].plot(x, [p["fid"] for p in points], fmt, **style)
    axes[1].plot(x, [p["top5"] for p in points], fmt, **style)


def _finish(fig, axes, title: str, path: Path, legend_size: int = 8) -> None:
    axes[0].set_ylabel("FID (emoji features, lower is better)")
    axes[1].set_ylabel("caption retrieval top-5")
    for ax in axes:
        ax.set_xlabel("training FLOPs")
        ax.legend(fontsize=legend_size)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(results: dict, path: Path, title: str) -> None:
    fig, axes = _figure()
    _curve(axes, results["decoupled"], "o-", c="#c44", label="low-res structure + texture")
    _curve(axes, results["monolithic"], "o-", c="#48c", label="monolithic")
    axes[0].axhline(results["floor"]["fid"], ls="--", c="k", lw=1, label="real images")
    axes[1].axhline(results["floor"]["top5"], ls="--", c="k", lw=1, label="real images")
    _finish(fig, axes, title, path)


def plot_splits(scale_name: str, seed: int) -> Path | None:
    """FID and retrieval against training FLOPs for every hand-over scored so far (one
    curve per split) beside the monolithic model: ``decoupled_splits_SCALE_seedN.png``."""
    found = {}
    names = [f"decoupled_training_{scale_name}_seed{seed}.json"]
    names += [
        p.name for p in RESULTS.glob(f"decoupled_training_{scale_name}_split*_seed{seed}.json")
    ]
    for path in (RESULTS / name for name in names if (RESULTS / name).is_file()):
        results = json.loads(path.read_text())
        if "summary" in results and "decoupled" in results:
            found[results["summary"]["settings"]["split"]] = results
    if len(found) < 2:
        return None
    fig, axes = _figure()
    mono = next(iter(found.values()))["monolithic"]
    _curve(axes, mono, "s-", c="k", label="monolithic")
    colours = iter(["#c44", "#e90", "#4a4", "#84c", "#48c"])
    for split, results in sorted(found.items()):
        label = f"pair, split t = {split}"
        _curve(axes, results["decoupled"], "o-", ms=3, c=next(colours), label=label)
    out = RESULTS / f"decoupled_splits_{scale_name}_seed{seed}.png"
    title = f"{scale_name} scale, seed {seed}: where the pair hands over"
    _finish(fig, axes, title, out, legend_size=7)
    return out


SETTINGS = {  # what each results file holds, by the part of its name after the split
    "": "pair, structure UNet as the texture one",
    "_structure-half": "pair, structure UNet at half its FLOPs",
    "_structure-quarter": "pair, structure UNet at a quarter of its FLOPs",
}


def seed_figures(results: dict, mono: dict) -> dict:
    """One seed's paired figures: the FLOPs the pair needs to reach the monolithic model's
    final FID over the monolithic FLOPs (None if it never does, with the bound that gives),
    and the pair's FID and top-5 at the monolithic model's final FLOPs, against its own."""
    from pangudraw.evaluate.stats import first_reach, value_at

    pair = results["decoupled"]
    flops = [p["training_flops"] for p in pair]
    final = mono["monolithic"][-1]
    reach = first_reach(flops, [p["fid"] for p in pair], final["fid"])
    ratio = None if reach is None else reach / final["training_flops"]
    at = final["training_flops"]
    return {
        "flops_ratio": ratio,
        "reached": ratio is not None,
        # not reached: the pair's whole curve is the bound (its last point's FLOPs)
        "flops_ratio_at_least": flops[-1] / final["training_flops"] if ratio is None else ratio,
        "monolithic_fid": final["fid"],
        "monolithic_top5": final["top5"],
        "pair_fid_at_equal_flops": value_at(flops, [p["fid"] for p in pair], at),
        "pair_top5_at_equal_flops": value_at(flops, [p["top5"] for p in pair], at),
        "pair_final_fid": pair[-1]["fid"],
        "pair_final_flops_over_monolithic": flops[-1] / at,
        "structure_flops_per_image": results["summary"]["flops_per_image"]["structure"],
    }


def claim_report(scale_name: str, split: int) -> dict:
    """Every seed scored so far for each setting at ``split``: per-seed figures, their
    means with 95% bootstrap intervals over seeds (paired: each seed's pair against the
    same seed's monolithic model), a results file and one plot."""
    from pangudraw.evaluate.stats import bootstrap_mean

    at = "" if split == SPLIT else f"_split{split}"
    report = {"scale": scale_name, "split": split, "settings": {}}
    curves = {}
    for suffix, label in SETTINGS.items():
        seeds = {}
        for path in sorted(RESULTS.glob(f"decoupled_training_{scale_name}{at}{suffix}_seed*.json")):
            seed = int(path.stem.rsplit("seed", 1)[1])
            mono_path = RESULTS / f"decoupled_training_{scale_name}{at}_seed{seed}.json"
            results, mono = json.loads(path.read_text()), json.loads(mono_path.read_text())
            if "summary" not in results or "summary" not in mono:
                continue  # still being scored
            seeds[seed] = seed_figures(results, mono)
            curves.setdefault(suffix, {})[seed] = (results["decoupled"], mono["monolithic"])
        if not seeds:
            continue
        figures = list(seeds.values())

        def interval(key: str, figures=figures) -> dict | None:
            values = [f[key] for f in figures if f[key] is not None]
            return bootstrap_mean(values).as_dict() if len(values) == len(figures) else None

        report["settings"][suffix or "_structure-same"] = {
            "label": label,
            "seeds": sorted(seeds),
            "per_seed": {str(k): v for k, v in sorted(seeds.items())},
            "reached": sum(f["reached"] for f in figures),
            # a seed that never reaches counts at its bound: a lower bound of the mean
            "flops_ratio": interval("flops_ratio_at_least"),
            "flops_ratio_is_lower_bound": not all(f["reached"] for f in figures),
            "fid_difference_at_equal_flops": bootstrap_mean(
                [f["pair_fid_at_equal_flops"] - f["monolithic_fid"] for f in figures]
            ).as_dict(),
            "top5_difference_at_equal_flops": bootstrap_mean(
                [f["pair_top5_at_equal_flops"] - f["monolithic_top5"] for f in figures]
            ).as_dict(),
            "structure_flops_per_image": figures[0]["structure_flops_per_image"],
        }
    out = RESULTS / f"decoupled_claim_a_{scale_name}{at}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot_bands(curves, RESULTS / f"decoupled_claim_a_{scale_name}{at}.png", scale_name, split)
    return report


def plot_bands(curves: dict, path: Path, scale_name: str, split: int) -> None:
    """FID and top-5 against training FLOPs: each setting's mean curve over its seeds with
    a band from the lowest to the highest seed, the monolithic model's likewise."""
    fig, axes = _figure()
    colours = {"": "#c44", "_structure-half": "#e90", "_structure-quarter": "#4a4"}
    mono_done = False
    for suffix, by_seed in curves.items():
        for label, pick, colour in (
            (SETTINGS[suffix], 0, colours[suffix]),
            ("monolithic", 1, "#48c"),
        ):
            if pick == 1 and mono_done:
                continue
            runs = [by_seed[s][pick] for s in sorted(by_seed)]
            flops = np.mean([[p["training_flops"] for p in r] for r in runs], axis=0)
            for ax, key in zip(axes, ("fid", "top5")):
                values = np.array([[p[key] for p in r] for r in runs])
                ax.plot(flops, values.mean(0), "o-", ms=3, c=colour,
                        label=f"{label} ({len(runs)} seeds)")  # fmt: skip
                ax.fill_between(flops, values.min(0), values.max(0), color=colour, alpha=0.15)
        mono_done = True
    title = f"{scale_name} scale, split t = {split}: mean over seeds, band = lowest to highest"
    _finish(fig, axes, title, path, legend_size=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=list(SCALES), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-minutes", type=float, default=40.0)
    parser.add_argument(
        "--split",
        type=int,
        default=SPLIT,
        help="The hand-over timestep: structure trains on [split, 1000), texture on [0, split).",
    )
    parser.add_argument(
        "--part", choices=["train", "evaluate", "all", "data", "split", "report"], default="all"
    )
    parser.add_argument(
        "--structure-unet",
        choices=["half", "quarter"],
        default=None,
        help="A cheaper structure UNet (about half or a quarter of its FLOPs per image); the "
        "texture and monolithic models are those of the same seed and split.",
    )
    parser.add_argument(
        "--split-steps",
        default="960,1920,2880,4800",
        help="With --part split: the snapshot steps combined (structure x texture).",
    )
    parser.add_argument(
        "--final-only", action="store_true", help="Score only the final models (another seed)."
    )
    parser.add_argument(
        "--pair-curve",
        action="store_true",
        help="Score the pair at every snapshot and the monolithic model at its final point "
        "only (another seed's FLOPs ratio).",
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.part == "data":
        found = data_preparation(args.scale, args.seed, args.chunk_minutes)
        root, scorer = ROOT / found["root"], Scorer(SCALES[args.scale])
        texture = root / "texture" / "model"
        for name in ("structure_all", "structure_high"):
            found[name] = scorer.point(root / name / "model", texture)
            print(name, found[name], flush=True)
        found["floor"] = scorer.floor
        out = RESULTS / f"decoupled_data_{args.scale}_seed{args.seed}.json"
        out.write_text(json.dumps(found, indent=2) + "\n")
        print(json.dumps(found, indent=2))
        return
    if args.part == "report":
        summary = claim_report(args.scale, args.split)
        print(json.dumps({k: v for k, v in summary.items() if k != "seeds"}, indent=2))
        return
    runs = train(args.scale, args.seed, args.chunk_minutes, args.split, args.structure_unet)
    if args.part == "train":
        return
    at = "" if args.split == SPLIT else f"_split{args.split}"
    at += "" if args.structure_unet is None else f"_structure-{args.structure_unet}"
    name = f"{args.scale}{at}_seed{args.seed}"
    if args.part == "split":
        steps = [int(s) for s in args.split_steps.split(",")]
        out = RESULTS / f"decoupled_split_{name}.json"
        found = budget_split(runs, Scorer(SCALES[args.scale]), out, steps, args.split)
        mono = json.loads((RESULTS / f"decoupled_training_{name}.json").read_text())["monolithic"]
        target, flops = mono[-1]["fid"], mono[-1]["training_flops"]
        front = frontier(found["points"])
        x, y = (np.array([p[k] for p in front]) for k in ("training_flops", "fid"))
        reach = crossing(x, y, target)
        found["frontier"] = front
        found["flops_ratio_best_split"] = None if reach is None else reach / flops
        out.write_text(json.dumps(found, indent=2) + "\n")
        print(json.dumps({"frontier": front, "ratio": found["flops_ratio_best_split"]}, indent=2))
        return
    name = f"decoupled_training_{name}"
    scorer = Scorer(SCALES[args.scale])
    results = evaluate(
        runs, scorer, RESULTS / f"{name}.json", args.final_only, args.split, args.pair_curve
    )
    results["summary"] = report(results, runs, args.scale, args.split)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    if args.final_only or args.pair_curve:  # no monolithic curve to plot
        return
    if args.structure_unet is not None:
        return
    title = f"{args.scale} scale, seed {args.seed}: structure at half the side, "
    title += f"split t = {args.split}"
    plot(results, RESULTS / f"{name}.png", title)
    plot_splits(args.scale, args.seed)


if __name__ == "__main__":
    main()
