"""Train the bundled learned bridges and put them in the zoo (one command, CPU).

    .venv/bin/python scripts/train_bridges.py [--data data/emoji-google] [--steps 1500]

Needs the emoji dataset (``pangu-draw data emoji --style google --out data/emoji-google``).
Each translator trains in a few minutes; its folder (weights, config, resources.json and
a card) is written to ``src/pangudraw/zoo/models/NAME`` and the manifest gets its hash.
After ``benchmarks/bench_bridges.py``, ``--cards`` rewrites the cards with its held-out
numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pangudraw.cli.shared import quiet_libraries
from pangudraw.train.bridges import ROUTES, train_route
from pangudraw.zoo import MODELS, write_manifest

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "emoji-google")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--only", default=None, help="one route name")
    parser.add_argument("--cards", action="store_true", help="only rewrite the cards")
    args = parser.parse_args()
    if args.cards:
        bench = ROOT / "benchmarks" / "results" / "bridges.json"
        routes = json.loads(bench.read_text())["routes"] if bench.is_file() else {}
        for route in ROUTES:
            write_card(route, routes.get(route.name))
        return
    quiet_libraries()
    torch.set_num_threads(2)
    for route in ROUTES:
        if args.only and route.name != args.only:
            continue
        model, record = train_route(route, args.data, steps=args.steps)
        folder = MODELS / route.name
        model.save(folder)
        (folder / "resources.json").write_text(json.dumps(record, indent=2) + "\n")
        write_card(route)
        print(json.dumps(record))
    write_manifest()


SPACES = {
    "structure": "the structure model's pixel space (2x2 patches folded into 12 channels)",
    "texture": "space A (vae_a: 4 channels at 1/4)",
    "full": "space A (vae_a: 4 channels at 1/4)",
    "generator_b": "space B (vae_b: 8 channels at 1/8)",
}


def write_card(route, held: dict | None = None) -> None:
    folder = MODELS / route.name
    record = json.loads((folder / "resources.json").read_text())
    kb = (folder / "translator.safetensors").stat().st_size / 1024
    if held:
        quality = (
            f"latent error {held['latent_error_relative']:.4f} of the target latents' variance; "
            f"decoded images {held['image_psnr_db_median']:.1f} dB PSNR (median) against the "
            f"exact bridge's; saturation {held['saturation_learned_over_exact']:.3f}x and "
            f"luminance spread {held['luminance_spread_learned_over_exact']:.3f}x the exact "
            f"bridge's ({held['held_out_inputs']} held-out inputs)"
        )
    else:
        quality = "not measured yet (benchmarks/bench_bridges.py)"
    title = f"{route.source} at {route.source_size} px -> {route.target} at {route.target_size} px"
    card = f"""# pangu-draw learned bridge: {title}

- stage: `bridge` (a latent translator, `pangudraw/translate.py`; no generator was retrained)
- what it is: moves a clean estimate from {SPACES[route.source]} at {route.source_size} px
  to {SPACES[route.target]} at {route.target_size} px in one small network instead of a
  decode, resize and encode; {record["parameters"]:,} parameters, float16, {kb:.0f} KB. Used
  only between these two spaces (named by their VAE weights' hash), with `--bridge learned`
  or `bridge = "learned"` in a recipe; any other pair of spaces takes the exact bridge.
- data: the training emoji of emoji-datasource-google@16.0.0 (Noto Emoji, Apache-2.0) at
  {route.source_size} px: clean latents, blends of 2-4 of them and latents of blurred
  images ({record["training_inputs"]:,} inputs); one emoji in ten held out (the
  evaluator's rule, so `tests/data/emoji_heldout` is unseen)
- training: mean squared error to the exact bridge's latents; Adam, one-cycle lr
  {record["lr"]}, batch {record["batch"]}
- optimizer steps: {record["steps"]}; wall time: {record["seconds"]} s on a 2-core CPU (plus
  a few minutes computing the exact targets); final loss {record["final_mse"]} (target
  variance {record["target_variance"]})
- held out (`benchmarks/bench_bridges.py`): {quality}
- command: `.venv/bin/python scripts/train_bridges.py --only {route.name}`
"""
    (folder / "README.md").write_text(card)


if __name__ == "__main__":
    main()
