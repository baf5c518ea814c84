"""PanGu-Draw v3 as released: its text stack, size buckets, style branches and sampler.

A converted release (``pangu-draw convert pangu-v3``) is two diffusers folders whose
``model_index.json`` carries a ``pangu_draw_v3`` entry. Loaded, each is an ordinary
expert (an SDXL-shaped UNet) with :class:`PanGuText` as its text stack, so Coop recipes
use it like any other model. What differs from SDXL, read from mindone's
``examples/pangu_draw_v3``:

- Text: a Chinese CLIP text model (BERT-Chinese WordPiece ids, last hidden state) and
  OpenCLIP ViT-bigG-14 (penultimate hidden state, pooled output); the negative prompt is
  encoded, an empty one too.
- Vector condition: the pooled text and a 256-wide sinusoidal embedding of the *index* of
  the target size in the release's bucket list (diffusers' ``text_time`` embedding with a
  one-number ``time_ids``).
- Style branches: each style adds a branch whose prompt is prefixed with one character
  the model was trained to read as that style; guidance is
  ``uc + s (c - uc) + sum_i s_i (x_i - c)``.
- Sampler: 40 Euler steps on the discrete VP sigmas at timesteps 999, 974, ..., 24; the
  high-timestep (structure) model runs while the *previous* step's timestep was >= 500,
  so the first step below 500 still uses it (:func:`handoff_index`).

Folders: a ``model_index.json`` with a ``pangu_draw_v3`` entry (what the converter writes).
Importing this module does not import torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .base import Conditioning, clip_states
from .sdxl import SDXL

STYLE_PREFIXES = {"aesthetic": "義 ", "cartoon": "饅 ", "photo": "霙 "}
# The release command's settings (demo/pangu/pangu_sampling.py: --sample_step 40,
# --guidance_scale 6.0, --aesthetic_scale 4.0, --high_solution at ratio 1.0).
RELEASE = {
    "steps": 40,
    "guidance_scale": 6.0,
    "sampler": "euler",
    "t_split": 500.0,
    "styles": (("aesthetic", 4.0),),
    "size": (1024, 1024),
}


def release_info(folder: str | Path) -> dict | None:
    """The ``pangu_draw_v3`` entry of a model folder's index, or None (not a converted
    release). Reads one JSON file; no torch."""
    index = Path(folder) / "model_index.json"
    try:
        entry = json.loads(index.read_text(encoding="utf-8")).get("pangu_draw_v3")
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) else None


def check_buckets(value, where: str) -> list[tuple[int, int]]:
    """The size buckets of a model index: a non-empty list of [width, height] pairs."""
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(b, list)
            and len(b) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 16384 for n in b)
            for b in value
        )
    )
    if not ok:
        raise UserError(f"{where}: size_buckets must be a list of [width, height] pairs")
    return [tuple(b) for b in value]


def bucket_index(buckets: list[tuple[int, int]], size: tuple[int, int]) -> int:
    """The index of ``size`` (height, width) in the (width, height) bucket list."""
    height, width = size
    if (width, height) not in buckets:
        shown = ", ".join(f"{w}x{h}" for w, h in buckets)
        raise UserError(
            f"PanGu-Draw v3 draws only the sizes it was trained on; {width}x{height} is not "
            f"one of {shown}"
        )
    return buckets.index((width, height))


def parse_style(text: str) -> tuple[str, float]:
    """``NAME[:SCALE]`` (scale 4 by default, as the release's aesthetic default)."""
    name, _, scale = text.partition(":")
    if name not in STYLE_PREFIXES:
        raise UserError(f"unknown style {name!r}; choose {', '.join(STYLE_PREFIXES)} or none")
    try:
        value = float(scale) if scale else 4.0
    except ValueError:
        raise UserError(f"style scale {scale!r} is not a number") from None
    if not -100 <= value <= 100:
        raise UserError(f"style scale {value:g} is outside [-100, 100]")
    return name, value


def handoff_index(timesteps: list[float], t_split: float) -> int:
    """The first step the low-timestep model runs under the release's rule: the high model
    runs step 0 and every step whose previous step's timestep was >= ``t_split``."""
    for i in range(1, len(timesteps)):
        if timesteps[i - 1] < t_split:
            return i
    return len(timesteps)


@dataclass
class PanGuText:
    """The release's two text encoders, with its size buckets.

    ``encode`` returns embeddings (copies * B, 77, D_zh + D_g) where the copies are the
    unconditional, conditional and one per style, in that order.
    """

    tokenizers: list
    encoders: list
    buckets: list[tuple[int, int]]

    def _embed(self, prompts: list[str]):
        import torch

        zh = clip_states(self.tokenizers[0], self.encoders[0], prompts)
        big = clip_states(self.tokenizers[1], self.encoders[1], prompts)
        embeds = torch.cat([zh.last_hidden_state.cpu(), big.hidden_states[-2].cpu()], dim=-1)
        return embeds, big.text_embeds.cpu()

    def encode(
        self,
        prompts: list[str],
        negatives: list[str] | None,
        guided: bool,
        size: tuple[int, int],
        styles: tuple[tuple[str, float], ...] = (),
    ) -> Conditioning:
        import torch

        index = bucket_index(self.buckets, size)
        if styles and not guided:
            raise UserError("style branches need guidance (a guidance scale above 1)")
        with torch.no_grad():
            branches = [self._embed(prompts)]
            if guided:
                branches.insert(0, self._embed(negatives or [""] * len(prompts)))
            for name, _ in styles:
                branches.append(self._embed([STYLE_PREFIXES[name] + p for p in prompts]))
        embeds = torch.cat([e for e, _ in branches])
        pooled = torch.cat([p for _, p in branches])
        time_ids = torch.full((embeds.shape[0], 1), float(index))
        return Conditioning(
            embeds,
            guided,
            {"text_embeds": pooled, "time_ids": time_ids},
            tuple(scale for _, scale in styles),
        )


class PanGuDrawV3(SDXL):
    """An SDXL-shaped UNet with :class:`PanGuText`; the release's sampler settings."""

    name = "pangu-v3"
    label = "PanGu-Draw v3"
    styles = True

    def recognise(self, index, config) -> bool:
        return "pangu_draw_v3" in index

    def recognise_file(self, keys) -> bool:
        return False  # converted into folders (pangu-draw convert pangu-v3)

    def defaults(self, index, config) -> dict:
        entry = index.get("pangu_draw_v3")
        buckets = [tuple(b) for b in (entry.get("size_buckets") or [])] if entry else []
        size = RELEASE["size"] if RELEASE["size"] in buckets or not buckets else buckets[0]
        defaults = {k: v for k, v in RELEASE.items() if k != "size"}
        return defaults | {"styles": list(RELEASE["styles"]), "handoff": "release", "size": size}

    def lora_text_encoders(self, text) -> dict:
        return {}  # its Chinese CLIP is no CLIP-L: an SDXL LoRA's text layers do not fit

    def text_stack(self, index, component, network, cache):
        entry = index["pangu_draw_v3"]
        where = "model_index.json"
        buckets = check_buckets(
            entry.get("size_buckets") if isinstance(entry, dict) else None, where
        )
        return PanGuText(
            [component("tokenizer"), component("tokenizer_2")],
            [component("text_encoder"), component("text_encoder_2")],
            buckets,
        )


FAMILY = PanGuDrawV3()
