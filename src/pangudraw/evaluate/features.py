"""A small emoji image network for offline metrics: FID features and caption retrieval.

No downloadable feature network (Inception, CLIP) may be used here, so the project trains
its own on the emoji data (scripts/train_evaluator.py): a CNN whose pooled features
(``features``) are trained to classify the emoji's subcategory (FID uses them), with a
second head (``embed``) trained contrastively against the frozen MiniLM caption
embeddings, so that an image can be matched to its caption (text alignment).
Reports built on it must say that the features are domain-trained, not Inception.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
    )


class EmojiNet(nn.Module):
    """(N, 3, 64, 64) images in [0, 1] -> features, subcategory logits, caption embedding."""

    def __init__(self, classes: list[str], width: int = 32, features: int = 256, text_dim=384):
        super().__init__()
        self.classes = list(classes)
        self.config = {"classes": self.classes, "width": width, "features": features,
                       "text_dim": text_dim, "size": 64}  # fmt: skip
        w = width
        self.body = nn.Sequential(
            _block(3, w, 1),
            _block(w, 2 * w, 2),
            _block(2 * w, 4 * w, 2),
            _block(4 * w, 8 * w, 2),
            nn.Conv2d(8 * w, features, 3, stride=2, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classify = nn.Linear(features, len(self.classes))
        self.project = nn.Linear(features, text_dim)
        self.log_temperature = nn.Parameter(torch.tensor(2.659))  # 1 / 0.07, as CLIP starts

    @property
    def num_features(self) -> int:
        return self.config["features"]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features for FID (what torchmetrics calls)."""
        return self.features(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length image embeddings in the caption-embedding space."""
        return F.normalize(self.project(self.features(images)), dim=-1)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.half().contiguous() for k, v in self.state_dict().items()}  # float16
        save_file(state, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")


def load_evaluator(folder: str | Path | None = None) -> EmojiNet:
    """The bundled evaluator (zoo/models/emoji_eval) or another folder saved by ``save``."""
    from safetensors.torch import load_file

    from ..zoo import MODELS

    folder = Path(folder) if folder is not None else MODELS / "emoji_eval"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise UserError(f"{folder} is not an evaluator folder (config.json, model.safetensors)")
    config = json.loads((folder / "config.json").read_text())
    net = EmojiNet(config["classes"], config["width"], config["features"], config["text_dim"])
    net.load_state_dict({k: v.float() for k, v in load_file(folder / "model.safetensors").items()})
    return net.eval()


@torch.no_grad()
def caption_embeddings(texts: list[str], text=None) -> torch.Tensor:
    """Unit-length MiniLM sentence embeddings (mean over tokens), as sentence-transformers."""
    if text is None:
        from ..textenc import load_minilm

        text = load_minilm()
    tokenizer, encoder = text
    rows = []
    for i in range(0, len(texts), 256):
        tokens = tokenizer(
            texts[i : i + 256],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        hidden = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        mask = tokens.attention_mask.unsqueeze(-1).float()
        rows.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(rows)


@torch.no_grad()
def retrieval_accuracy(
    net: EmojiNet,
    images: torch.Tensor,
    captions: torch.Tensor,
    truth: torch.Tensor,
    ks: tuple[int, ...] = (1, 5),
) -> dict[int, float]:
    """Top-k accuracy of finding each image's caption among all ``captions``.

    Args:
        images: (N, 3, 64, 64) in [0, 1].
        captions: (M, D) unit caption embeddings (the candidates).
        truth: (N,) index of each image's caption among the candidates.
    """
    embeds = torch.cat([net.embed(chunk.float()) for chunk in images.split(256)])
    ranks = (embeds @ captions.T).argsort(dim=1, descending=True)
    position = (ranks == truth[:, None]).float().argmax(1)
    return {k: float((position < k).float().mean()) for k in ks}
