"""Learned bridges against the exact bridge: accuracy, colour, Coop quality and speed.

1. Each bundled translator on held-out emoji (the evaluator's one in ten, never trained
   on), inputs as the training makes them (clean latents, blends, blurred images):
   latent error relative to the latents' variance, PSNR of the decoded images against the
   exact bridge's, and colour (SD-Latent-Interposer is reported to lose saturation and
   dynamic range): mean saturation and luminance spread of the decoded images, learned
   over exact (1.0 = kept).
2. Coop quality, exact vs learned, as bench_coop_quality.py measures it: the Canny expert
   (space A) and the colour expert (space B) in one loop on 32 held-out emoji (edge F1,
   colour-layout error, retrieval, FID), and the 32 px structure expert (pixel space) with
   the 64 px expert (space A) on 64 captions.
3. Speed, alternating exact and learned runs (medians): the two-space Coop loop of part 2
   (one image, 25 steps) as wall time over the UNets' own time, and one image from the
   bundled structure + texture pair (the default 15 steps).

    .venv/bin/python benchmarks/bench_bridges.py [--runs 5]

Writes benchmarks/results/bridges.json and benchmarks/results/bridges.png (a sheet:
exact above learned for the Coop images).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[1] / "data" / "emoji-google"


def colour_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean saturation (max - min over RGB) and mean luminance standard deviation of
    (B, 3, H, W) images in [-1, 1]."""
    x = (images.clamp(-1, 1) + 1) / 2
    saturation = (x.amax(1) - x.amin(1)).mean()
    luminance = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).flatten(1).std(1).mean()
    return float(saturation), float(luminance)


def route_accuracy() -> dict:
    from pangudraw.bridge import BridgePolicy
    from pangudraw.train.bridges import ROUTES, route_data

    out = {}
    for route in ROUTES:
        x, exact, source, target = route_data(route, DATA, held=True)
        with torch.no_grad():
            learned = torch.cat([BridgePolicy("learned")(c, source, target) for c in x.split(256)])
            image_exact = torch.cat([target.space.decode(c) for c in exact.split(256)]).clamp(-1, 1)
            image_learned = torch.cat([target.space.decode(c) for c in learned.split(256)]).clamp(
                -1, 1
            )
        mse = ((image_learned - image_exact) ** 2).flatten(1).mean(1)
        psnr = (10 * torch.log10(4 / mse.clamp_min(1e-10))).median()
        sat_e, lum_e = colour_stats(image_exact)
        sat_l, lum_l = colour_stats(image_learned)
        out[route.name] = {
            "held_out_inputs": len(x),
            "latent_error_relative": round(float(((learned - exact) ** 2).mean() / exact.var()), 4),
            "image_psnr_db_median": round(float(psnr), 2),
            "saturation_learned_over_exact": round(sat_l / sat_e, 3),
            "luminance_spread_learned_over_exact": round(lum_l / lum_e, 3),
        }
        print(route.name, out[route.name], flush=True)
    return out


def coop_quality() -> tuple[dict, list]:
    from bench_coop_quality import GUIDANCE, HELD_OUT, STEPS, metrics
    from bench_decoupled_quality import real_images
    from diffusers.utils.torch_utils import randn_tensor

    from pangudraw.bridge import BridgePolicy, Site
    from pangudraw.controls import ControlTransform
    from pangudraw.coop import Participant, make_scheduler, sample
    from pangudraw.evaluate.features import load_evaluator
    from pangudraw.evaluate.fid import FeatureExtractor, fid_against
    from pangudraw.evaluate.report import read_folder
    from pangudraw.expert import Control
    from pangudraw.loading.models import load_controlnet, load_expert
    from pangudraw.pipelines import split_sigma

    real, texts = real_images()
    net = load_evaluator()
    fid = fid_against(real.float() / 255, FeatureExtractor(net, net.num_features, 64))
    full, gen_b = load_expert("zoo:full"), load_expert("zoo:generator_b")
    canny = load_controlnet("zoo:controlnet_canny", full)
    colour = load_controlnet("zoo:controlnet_colour", gen_b)
    paths, held = read_folder(HELD_OUT)
    captions = json.loads((HELD_OUT / "captions.json").read_text())
    n = 32
    prompts = [captions[p.name]["text"] for p in paths[:n]]
    edges = ControlTransform("canny")(held[:n])
    layouts = ControlTransform("colour")(held[n : 2 * n])
    site_a = Site(full.space, (64, 64))

    def run(participants, canvas, count, mode):
        generators = [torch.Generator().manual_seed(i) for i in range(count)]
        noise = randn_tensor(canvas.latent_shape(count), generator=generators)
        scheduler = make_scheduler("euler", participants[0].expert.scheduler_config)
        with torch.inference_mode():
            latents = sample(participants, scheduler, noise, STEPS, generators, None, canvas,
                             move=BridgePolicy(mode))  # fmt: skip
            images = (canvas.space.decode(latents).float() / 2 + 0.5).clamp(0, 1)
        return (images * 255).round().to(torch.uint8)

    edge_cond = full.encode_prompt(prompts, None, GUIDANCE)
    colour_cond = gen_b.encode_prompt(prompts, None, GUIDANCE)
    multi = [
        Participant(full, edge_cond, GUIDANCE, 0.5, controls=[Control(canny, edges)]),
        Participant(
            gen_b, colour_cond, GUIDANCE, 0.5, size=(64, 64), controls=[Control(colour, layouts)]
        ),  # fmt: skip
    ]
    structure = load_expert("zoo:structure")
    rng = torch.Generator().manual_seed(0)
    chosen = [texts[int(i)] for i in torch.randperm(len(texts), generator=rng)[:64]]
    sigma = split_sigma(structure, 500)
    pair = [
        Participant(structure, structure.encode_prompt(chosen, None, GUIDANCE), GUIDANCE, 1.0,
                    (sigma, float("inf")), size=(32, 32)),
        Participant(full, full.encode_prompt(chosen, None, GUIDANCE), GUIDANCE, 1.0, (0.0, sigma)),
    ]  # fmt: skip
    results, sheets = {}, []
    for mode in ("exact", "learned"):
        start = time.perf_counter()
        images = run(multi, site_a, n, mode)
        results[f"Coop canny + colour (A + B), {mode}"] = metrics(
            images, prompts, net, fid, edges, layouts
        ) | {"seconds": round(time.perf_counter() - start, 1)}
        sheets.append(images[:8])
        images = run(pair, site_a, 64, mode)
        results[f"structure 32 px (pixel) + full 64 px (A), {mode}"] = metrics(
            images, chosen, net, fid
        )
        sheets.append(images[:8])
        print(mode, {k: v for k, v in results.items() if mode in k}, flush=True)
    return results, sheets


def speed(runs: int) -> dict:
    from bench_coop import NetworkClock

    from pangudraw.bridge import BridgePolicy, Site
    from pangudraw.coop import Participant, make_scheduler, sample
    from pangudraw.loading.models import load_expert
    from pangudraw.pipelines import generate

    full, gen_b = load_expert("zoo:full"), load_expert("zoo:generator_b")
    structure, texture = load_expert("zoo:structure"), load_expert("zoo:texture")
    clocks = [NetworkClock(full.network), NetworkClock(gen_b.network)]
    site = Site(full.space, (64, 64))
    parts = [
        Participant(full, full.encode_prompt(["red heart"], None, 5.0), 5.0, 0.5),
        Participant(gen_b, gen_b.encode_prompt(["red heart"], None, 5.0), 5.0, 0.5, size=(64, 64)),
    ]
    times = {"coop_wall": {}, "coop_network": {}, "pair_wall": {}}
    for run in range(runs + 1):  # the first round warms up and is dropped
        for mode in ("exact", "learned") if run % 2 else ("learned", "exact"):
            for clock in clocks:
                clock.total = 0.0
            noise = torch.randn(site.latent_shape(1), generator=torch.Generator().manual_seed(0))
            start = time.perf_counter()
            with torch.inference_mode():
                sample(parts, make_scheduler("euler", full.scheduler_config), noise, 25, None,
                       None, site, move=BridgePolicy(mode))  # fmt: skip
            wall = time.perf_counter() - start
            start = time.perf_counter()
            generate(structure, texture, "red heart", num_inference_steps=15, seed=1, bridge=mode)
            pair = time.perf_counter() - start
            if run:
                times["coop_wall"].setdefault(mode, []).append(wall)
                times["coop_network"].setdefault(mode, []).append(sum(c.total for c in clocks))
                times["pair_wall"].setdefault(mode, []).append(pair)
    out = {}
    for mode in ("exact", "learned"):
        wall = statistics.median(times["coop_wall"][mode])
        network = statistics.median(times["coop_network"][mode])
        out[mode] = {
            "coop_wall_s": round(wall, 3),
            "coop_network_s": round(network, 3),
            "coop_wall_over_network": round(wall / network, 3),
            "pair_one_image_s": round(statistics.median(times["pair_wall"][mode]), 3),
        }
    out["learned_over_exact_coop_wall"] = round(
        out["learned"]["coop_wall_s"] / out["exact"]["coop_wall_s"], 3
    )
    out["learned_over_exact_pair"] = round(
        out["learned"]["pair_one_image_s"] / out["exact"]["pair_one_image_s"], 3
    )
    print(out, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    from pangudraw.cli.shared import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(2)
    results = {"routes": route_accuracy(), "speed": speed(args.runs)}
    if not args.skip_quality:
        quality, sheets = coop_quality()
        results["coop_quality"] = quality
        from pangudraw.imageio import grid_image

        sheet = grid_image(torch.cat(sheets).float() / 255, 8)
        sheet.save(RESULTS / "bridges.png")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bridges.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
