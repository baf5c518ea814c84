"""PNG files that carry their generation parameters (A1111's ``parameters`` text chunk)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

JSON_KEY = "pangu-draw"


def a1111_parameters(prompt: str, negative_prompt: str | None, settings: dict) -> str:
    """The ``parameters`` text A1111 and ComfyUI readers understand."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {value}" for key, value in settings.items()))
    return "\n".join(lines)


def save_png(image: Image.Image, path: Path, parameters: str, record: dict) -> None:
    """Write ``image`` with both metadata chunks, atomically: the file appears whole or not at all.

    ``record`` is the exact machine-readable request (JSON) that reproduces the image.
    """
    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_text(JSON_KEY, json.dumps(record, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_record(path: Path) -> dict:
    """The JSON record :func:`save_png` stored in ``path``."""
    with Image.open(path) as image:
        return json.loads(image.text[JSON_KEY])


def save_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """(N, 3, H, W) images in [0, 1] as one PNG grid, ``columns`` wide."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.ones(3, rows * h, columns * w)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    array = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
