"""Chinese prompts for the bundled models, on emoji held out of the distillation.

1. Text: each held-out emoji's Chinese name, embedded (mean-pooled MiniLM), retrieves its
   English name among all held-out English names: with the bundled Chinese rows, with
   plain MiniLM (most CJK characters are [UNK] there), and chance.
2. Images: the bundled pair draws every held-out emoji from its Chinese name and from its
   English name (same seed, 25 Euler steps, guidance 7); the bundled evaluator's caption
   retrieval (top-1/top-5 among the held-out English names) scores both, and plain
   MiniLM's Chinese as the baseline. Goal: Chinese >= 0.9x English top-5.
   For scale, the same English names reworded by one word ("a lemon", "lemon emoji", "the
   lemon", "lemon icon") are scored against the names as they are.
3. A grid of eight held-out emoji: Chinese prompts above, English prompts below.

Writes benchmarks/results/chinese.json and chinese_grid.png.

    .venv/bin/python benchmarks/bench_chinese.py [--data data/emoji-google] [--limit 0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pangudraw.cli.shared import quiet_libraries
from pangudraw.evaluate.features import caption_embeddings, load_evaluator, retrieval_accuracy
from pangudraw.families.sd import SDText
from pangudraw.imageio import save_grid
from pangudraw.loading.models import load_expert
from pangudraw.pipelines import generate
from pangudraw.textenc import ZH_FOLDER, is_cjk, load_chinese_encoder, load_minilm, read_cjk_rows
from pangudraw.train.chinese import chance, chinese_held_out, load_pairs, retrieval

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "emoji-google")
    parser.add_argument("--limit", type=int, default=0, help="first N held-out emoji (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet_libraries()
    pairs = [p for p in load_pairs(args.data) if chinese_held_out(p.file)]
    pairs = pairs[: args.limit] if args.limit else pairs
    english = [p.english for p in pairs]
    chinese = [p.chinese for p in pairs]
    bilingual, plain = load_minilm(), load_minilm(chinese=False)
    # Chinese text: MiniLM with the rows and, where bundled, the low-rank change merged in
    chinese_encoder = load_chinese_encoder()
    zh_text = (bilingual[0], chinese_encoder or bilingual[1])
    candidates = caption_embeddings(english, plain)
    result = {
        "held_out_emoji": len(pairs),
        "text_retrieval": {
            "chinese_rows": retrieval(zh_text, chinese, candidates),
            "plain_minilm": retrieval(plain, chinese, candidates),
            "english": retrieval(plain, english, candidates),
            "chance": chance(len(pairs)),
        },
    }
    structure, texture = load_expert("zoo:structure"), load_expert("zoo:texture")
    evaluator = load_evaluator()
    truth = torch.arange(len(pairs))
    trained = set(read_cjk_rows(ZH_FOLDER)[0])  # the characters the distillation saw
    seen = [all(c in trained for c in p.chinese if is_cjk(c)) for p in pairs]
    indices = {
        "all characters trained": [i for i, s in enumerate(seen) if s],
        "some character untrained": [i for i, s in enumerate(seen) if not s],
    }
    for kind in KINDS:  # where the gap is: names that differ in what they say, by kind
        indices[kind] = [i for i, e in enumerate(english) if kind_of(e) == kind]
    subsets = {part: torch.tensor(ids, dtype=torch.long) for part, ids in indices.items() if ids}
    result["held_out_names_with_untrained_characters"] = seen.count(False)
    images, timing = {}, {}
    runs = [
        ("chinese", chinese, None),
        ("english", english, None),
        ("chinese_plain_minilm", chinese, SDText(*plain)),
    ]
    # How far the generators carry a prompt that is not their training caption: the same
    # English name reworded, a yardstick for the Chinese ratio.
    runs += [(form, [form.format(name=e) for e in english], None) for form in REWORDINGS]
    for label, prompts, text in runs:
        for expert in (structure, texture):
            expert.text = text or SDText(*bilingual, chinese_encoder)
        tick = time.perf_counter()
        out = draw(structure, texture, prompts, args.seed)
        timing[label] = round(time.perf_counter() - tick, 1)
        images[label] = out
        accuracy = retrieval_accuracy(evaluator, out, candidates, truth)
        scores = result.setdefault("image_retrieval", {})
        scores[label] = {f"top{k}": v for k, v in accuracy.items()}
        # The same, split by whether every character of the Chinese name was trained.
        for part, members in subsets.items():
            sub = retrieval_accuracy(evaluator, out[members], candidates, truth[members])
            scores[f"{label} ({part})"] = {f"top{k}": v for k, v in sub.items()}
    top5 = {label: scores[label]["top5"] for label in scores}

    def over(label: str, base: str = "english") -> float:
        return top5[label] / max(top5[base], 1e-9)

    result["chinese_over_english_top5"] = over("chinese")
    result["chinese_over_english_top5_by_kind"] = {
        f"{kind} ({len(subsets[kind])})": over(f"chinese ({kind})", f"english ({kind})")
        for kind in KINDS
        if kind in subsets
    }
    result["reworded_english_over_english_top5"] = {form: over(form) for form in REWORDINGS}
    result["goal"] = ">= 0.9"
    result["settings"] = "bundled structure + texture, 25 Euler steps, guidance 7, split 500"
    result["wall_s"] = timing
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chinese.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    shown = list(range(0, len(pairs), max(1, len(pairs) // 8)))[:8]
    save_grid(
        torch.cat([images["chinese"][shown], images["english"][shown]]),
        RESULTS / "chinese_grid.png",
        len(shown),
    )
    print(json.dumps(result, indent=2, ensure_ascii=False))
    print("grid columns:", " | ".join(f"{chinese[i]} / {english[i]}" for i in shown))


KINDS = ("skin-tone variants", "flags", "other emoji")
# English prompts one word away from the caption: two articles, two content words
REWORDINGS = ("a {name}", "{name} emoji", "the {name}", "{name} icon")


def kind_of(english: str) -> str:
    """Skin-tone variants name a person or hand and a tone; CLDR's Chinese names of flags
    are the bare place name (no word for flag), so those prompts say less than the English."""
    if "skin tone" in english:
        return KINDS[0]
    return KINDS[1] if english.endswith(" flag") else KINDS[2]


def draw(structure, texture, prompts: list[str], seed: int) -> torch.Tensor:
    """One image per prompt, image i with seed + i, in batches of 32."""
    batches = []
    for i in range(0, len(prompts), 32):
        chunk = prompts[i : i + 32]
        batches.append(
            generate(structure, texture, chunk, num_images=len(chunk), seed=seed + i).images
        )
    return torch.cat(batches)


if __name__ == "__main__":
    main()
