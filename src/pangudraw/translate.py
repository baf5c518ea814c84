"""Learned bridges: small convolutional translators between two latent spaces.

The exact bridge (:func:`pangudraw.bridge.bridge`) decodes an estimate to pixels, resizes
and encodes it into the other space: two VAE passes per bridged estimate, which on the
CPU cost as much as the UNets themselves. A translator does the same move in one small
network on the latents: convolutions at the source grid, features resized to the target
grid, convolutions there, plus a learned linear map of the resized input (so an untrained
translator is already a linear guess). It is distilled from the exact bridge on emoji
(``train/bridges.py``) and used only between the two spaces it was trained for; any
other pair of spaces takes the exact bridge.

A space is named by :func:`space_id`: ``pixel:N`` for a pixel space folding N x N
patches, ``vae:`` and the first 16 hex digits of the VAE weights' SHA-256 otherwise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .latents import LatentSpace


def space_id(space: LatentSpace) -> str:
    if space.vae is None:
        return f"pixel:{space.unshuffle}"
    return "vae:" + space._weights_digest[:16]


@dataclass(frozen=True)
class TranslatorConfig:
    in_channels: int
    out_channels: int
    width: int = 48
    blocks: int = 3  # residual blocks at the source grid, and as many at the target grid
    source: str = ""  # space_id of the source space
    target: str = ""


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(self.norm(x)))))


class Translator(nn.Module):
    """(B, C_s, h_s, w_s) latents -> (B, C_t, h_t, w_t) latents of the same image."""

    def __init__(self, config: TranslatorConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.head = nn.Conv2d(config.in_channels, w, 3, padding=1)
        self.before = nn.Sequential(*[_Block(w) for _ in range(config.blocks)])
        self.after = nn.Sequential(*[_Block(w) for _ in range(config.blocks)])
        self.tail = nn.Conv2d(w, config.out_channels, 3, padding=1)
        self.linear = nn.Conv2d(config.in_channels, config.out_channels, 1)

    def forward(self, x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        def resize(t):
            if tuple(t.shape[-2:]) == tuple(out_hw):
                return t
            return F.interpolate(t, size=out_hw, mode="bilinear", align_corners=False)

        features = resize(self.before(self.head(x)))
        return self.tail(F.silu(self.after(features))) + self.linear(resize(x))

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        state = {k: v.detach().half().contiguous() for k, v in self.state_dict().items()}
        save_file(state, folder / "translator.safetensors")

    @classmethod
    def load(cls, folder: Path) -> Translator:
        from safetensors.torch import load_file

        from .files import read_json

        config = read_json(folder / "config.json", "translator config")
        try:
            config = TranslatorConfig(**config)
            model = cls(config)
            state = load_file(folder / "translator.safetensors")
            model.load_state_dict({k: v.float() for k, v in state.items()})
        except (TypeError, ValueError, RuntimeError, OSError) as exc:
            raise UserError(f"cannot load translator {folder}: {str(exc).splitlines()[0]}") from exc
        return model.eval().requires_grad_(False)
