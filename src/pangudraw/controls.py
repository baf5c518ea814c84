"""Control-image transforms: what a ControlNet is conditioned on, computed from an image.

A transform is saved as ``control.json`` next to the ControlNet trained with it, so a
recipe can give a source image and get the same kind of control image the net saw.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError
from .files import read_json

KINDS = ("canny", "colour")


@dataclass(frozen=True)
class ControlTransform:
    """``canny``: OpenCV Canny edges (white on black) with thresholds ``low`` / ``high``;
    ``colour``: the mean colour of each cell of a ``cells`` x ``cells`` grid."""

    kind: str = "canny"
    low: int = 100
    high: int = 200
    cells: int = 8

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"unknown control kind {self.kind!r}; use one of {', '.join(KINDS)}")
        for name, lo, hi in (("low", 0, 1000), ("high", 0, 1000), ("cells", 1, 256)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise UserError(f"control {name} must be an integer in [{lo}, {hi}], got {value!r}")

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 images -> (N, 3, H, W) float control images in [0, 1]."""
        if self.kind == "colour":
            h, w = pixels.shape[-2:]
            cells = F.adaptive_avg_pool2d(pixels.float() / 255, self.cells)
            return F.interpolate(cells, size=(h, w), mode="nearest")
        import cv2

        edges = [
            cv2.Canny(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), self.low, self.high)
            for image in pixels
        ]
        return torch.from_numpy(np.stack(edges)).float().div(255)[:, None].expand(-1, 3, -1, -1)

    def save(self, folder: Path) -> None:
        (folder / "control.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_dict(cls, table: dict, where: str) -> ControlTransform:
        """A transform from its saved fields; unknown fields and wrong types name ``where``."""
        unknown = sorted(set(table) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r}; known: kind, low, high, cells")
        try:
            return cls(**table)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from exc

    @classmethod
    def load(cls, folder: Path) -> ControlTransform | None:
        """The transform saved beside a ControlNet, or None when it has none."""
        path = Path(folder) / "control.json"
        if not path.is_file():
            return None
        return cls.from_dict(read_json(path, "control transform"), str(path))
