"""FID through torchmetrics with a custom, domain-trained feature extractor (not Inception).

Every report that quotes these numbers must say that the features are domain-trained.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class FeatureExtractor(nn.Module):
    """Wraps a network mapping (N, 3, H, W) images in [0, 1] to (N, d) features for torchmetrics.

    ``size`` is the resolution the network expects; inputs are resized to it.
    """

    def __init__(self, net: nn.Module, num_features: int, size: int):
        super().__init__()
        self.net, self.num_features, self.size = net.eval(), num_features, size

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if images.shape[-1] != self.size:
            images = nn.functional.interpolate(
                images, size=(self.size, self.size), mode="bilinear", antialias=True
            )
        return self.net(images).flatten(1).double()


def fid_against(real: torch.Tensor, extractor: FeatureExtractor) -> Callable[[torch.Tensor], float]:
    """FID of image sets against one reference whose features are computed once.

    ``real`` and every set are (N, 3, H, W) images in [0, 1], in ``extractor``'s space.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(
        feature=extractor,
        normalize=True,
        input_img_size=(3, extractor.size, extractor.size),
        reset_real_features=False,
    )
    for chunk in real.split(256):
        metric.update(chunk, real=True)

    def score(generated: torch.Tensor) -> float:
        metric.reset()  # the generated half only
        for chunk in generated.split(256):
            metric.update(chunk, real=False)
        return float(metric.compute())

    return score


def fid(real: torch.Tensor, generated: torch.Tensor, extractor: FeatureExtractor) -> float:
    """FID between two sets of (N, 3, H, W) images in [0, 1] in ``extractor``'s feature space."""
    return fid_against(real, extractor)(generated)
