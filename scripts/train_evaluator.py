"""Train the offline evaluator (pangudraw.evaluate.features.EmojiNet) and bundle it.

Data: both emoji styles (`pangu-draw data emoji --style google|twitter --out data/emoji-*`),
64 px. One emoji in ten (both styles of it) is held out; the card reports held-out
subcategory accuracy and caption retrieval. Writes src/pangudraw/zoo/models/emoji_eval.

    .venv/bin/python scripts/train_evaluator.py [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pangudraw.evaluate.features import EmojiNet, caption_embeddings, retrieval_accuracy
from pangudraw.train.config import TrainConfig
from pangudraw.train.emoji import held_out
from pangudraw.train.stagedata import load_pool
from pangudraw.zoo import MODELS

ROOT = Path(__file__).resolve().parents[1]
STYLES = ("google", "twitter")


def load(style: str):
    folder = ROOT / f"data/emoji-{style}"
    if not (folder / "metadata.jsonl").is_file():
        sys.exit(f"{folder} is missing: pangu-draw data emoji --style {style} --out {folder}")
    rows = {}
    for line in (folder / "metadata.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["file_name"]] = row
    config = TrainConfig(stage="full", data=str(folder), output="", resolution=64, min_size=64)
    pool = load_pool(config)
    return pool.pixels, [rows[k] for k in pool.keys]


def shift(images: torch.Tensor, generator: torch.Generator, pixels: int = 4) -> torch.Tensor:
    """Random translations by up to ``pixels``, filled with white (emoji sit on white)."""
    padded = F.pad(images, (pixels,) * 4, value=1.0)
    out = torch.empty_like(images)
    offsets = torch.randint(0, 2 * pixels + 1, (len(images), 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + 64, dx : dx + 64]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()

    pixels, rows = [], []
    for style in STYLES:
        p, r = load(style)
        pixels.append(p)
        rows += r
    images = torch.cat(pixels)  # uint8
    classes = sorted({r["subcategory"] for r in rows})
    labels = torch.tensor([classes.index(r["subcategory"]) for r in rows])
    texts = sorted({r["text"] for r in rows})
    caption_of = torch.tensor([texts.index(r["text"]) for r in rows])
    captions = caption_embeddings(texts)
    test = torch.tensor([held_out(r["file_name"]) for r in rows])
    train_idx, test_idx = (~test).nonzero()[:, 0], test.nonzero()[:, 0]
    print(f"{len(rows)} images, {len(classes)} subcategories, {len(texts)} captions; "
          f"{len(test_idx)} held out")  # fmt: skip

    net = EmojiNet(classes)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * math.ceil(len(train_idx) / args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    step = 0
    for epoch in range(args.epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        net.train()
        for batch in order.split(args.batch):
            x = shift(images[batch].float() / 255, generator)
            feats = net.features(x)
            ce = F.cross_entropy(net.classify(feats), labels[batch])
            embeds = F.normalize(net.project(feats), dim=-1)
            target = captions[caption_of[batch]]
            logits = net.log_temperature.exp().clamp(max=100) * embeds @ target.T
            # Two images of one emoji share a caption: both count as positives.
            same = caption_of[batch][:, None] == caption_of[batch][None, :]
            nce = -(logits.log_softmax(1) * same / same.sum(1, keepdim=True)).sum(1).mean()
            loss = ce + nce
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
        net.eval()
        with torch.no_grad():
            x = images[test_idx].float() / 255
            predicted = net.classify(net.features(x)).argmax(1)
            accuracy = float((predicted == labels[test_idx]).float().mean())
            held_captions = caption_of[test_idx].unique()
            candidates = captions[held_captions]
            truth = (caption_of[test_idx][:, None] == held_captions[None]).float().argmax(1)
            retrieval = retrieval_accuracy(net, x, candidates, truth)
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, held-out subcategory accuracy "
              f"{accuracy:.3f}, retrieval top-1 {retrieval[1]:.3f} top-5 {retrieval[5]:.3f} "
              f"among {len(held_captions)} captions ({time.perf_counter() - started:.0f} s)",
              flush=True)  # fmt: skip

    folder = MODELS / "emoji_eval"
    net.save(folder)
    figures = {
        "images": len(rows),
        "held_out_images": len(test_idx),
        "subcategories": len(classes),
        "held_out_subcategory_accuracy": round(accuracy, 4),
        "held_out_retrieval_top1": round(retrieval[1], 4),
        "held_out_retrieval_top5": round(retrieval[5], 4),
        "retrieval_candidates": len(held_captions),
        "chance_top1": round(1 / len(held_captions), 4),
        "optimizer_steps": step,
        "epochs": args.epochs,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    (folder / "resources.json").write_text(json.dumps(figures, indent=2) + "\n")
    (folder / "training_config.json").write_text(
        json.dumps({"stage": "evaluator", "resolution": 64, **vars(args)}, indent=2) + "\n"
    )
    (folder / "README.md").write_text(card(figures, args))
    print(json.dumps(figures, indent=2))


def card(f: dict, args) -> str:
    return f"""# pangu-draw emoji evaluator (domain-trained features, not Inception)

- stage: `evaluator`
- resolution: 64 px; data: emoji-datasource-google@16.0.0 (Noto Emoji, Apache-2.0) and
  emoji-datasource-twitter@16.0.0 (Twemoji, CC-BY 4.0), {f["images"]} images, one emoji in
  ten (both styles) held out: {f["held_out_images"]} images
- what it is: a {f["parameters"] / 1e6:.2f}M-parameter CNN. Its pooled 256-d features are
  trained to classify the emoji's subcategory ({f["subcategories"]} classes; FID uses these
  features), and a projection of them is trained contrastively against the frozen
  all-MiniLM-L6-v2 caption embeddings (caption retrieval measures text alignment).
- held out: subcategory accuracy {f["held_out_subcategory_accuracy"]:.3f}; caption
  retrieval top-1 {f["held_out_retrieval_top1"]:.3f}, top-5 {f["held_out_retrieval_top5"]:.3f}
  among {f["retrieval_candidates"]} captions (chance top-1 {f["chance_top1"]:.4f})
- optimizer steps: {f["optimizer_steps"]} ({args.epochs} epochs, batch {args.batch}, AdamW,
  one-cycle lr {args.lr}); wall time: {f["wall_time_s"]} s on a 2-core CPU
- command: `.venv/bin/python scripts/train_evaluator.py --epochs {args.epochs}`

Weights are stored in float16 (loaded as float32); the held-out figures above were
measured in float32 just before the conversion.

FID computed with these features is comparable only with itself: say "FID (emoji
features)" whenever it is quoted.
"""


if __name__ == "__main__":
    main()
