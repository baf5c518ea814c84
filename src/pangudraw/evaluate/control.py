"""Control fidelity measured directly: edge F1 and colour-layout error."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..controls import ControlTransform


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius == 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


def edge_f1(
    images: torch.Tensor, edges: torch.Tensor, tolerance: int = 1, low: int = 100, high: int = 200
) -> torch.Tensor:
    """F1 of the Canny edges of ``images`` against control edge maps, per image.

    An edge pixel counts as matched when the other map has an edge within ``tolerance``
    pixels (Chebyshev distance). Images with no edges on either side score 1.

    Args:
        images: (N, 3, H, W) uint8 generated images.
        edges: (N, 1 or 3, H, W) control edge maps in [0, 1].
    Returns:
        (N,) F1 scores in [0, 1].
    """
    found = ControlTransform("canny", low, high)(images)[:, :1] > 0.5
    target = edges[:, :1] > 0.5
    precision_hits = (found & (_dilate(target.float(), tolerance) > 0)).sum((1, 2, 3))
    recall_hits = (target & (_dilate(found.float(), tolerance) > 0)).sum((1, 2, 3))
    n_found, n_target = found.sum((1, 2, 3)), target.sum((1, 2, 3))
    precision = precision_hits / n_found.clamp(min=1)
    recall = recall_hits / n_target.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return torch.where((n_found == 0) & (n_target == 0), torch.ones_like(f1), f1)


def colour_layout_error(
    images: torch.Tensor, layouts: torch.Tensor, cells: int = 8
) -> torch.Tensor:
    """Mean absolute difference between the images' cell colours and the control layouts.

    Args:
        images: (N, 3, H, W) uint8 generated images.
        layouts: (N, 3, H, W) colour-layout control images in [0, 1].
    Returns:
        (N,) errors in [0, 1] (0: every cell has the control's colour).
    """
    ours = F.adaptive_avg_pool2d(images.float() / 255, cells)
    theirs = F.adaptive_avg_pool2d(layouts.float(), cells)
    return (ours - theirs).abs().mean((1, 2, 3))
