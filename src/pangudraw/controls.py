"""Control-image transforms: what a ControlNet is conditioned on, computed from an image.

A transform is saved as ``control.json`` next to the ControlNet trained with it, so a
recipe can give a source image and get the same kind of control image the net saw.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

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
    def load(cls, folder: Path) -> ControlTransform | None:
        path = Path(folder) / "control.json"
        return cls(**json.loads(path.read_text())) if path.is_file() else None
