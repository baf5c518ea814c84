"""Images in and out: PNGs that carry their generation parameters (A1111's ``parameters``
text chunk and our JSON record), sample grids, and reading control images and masks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from .errors import UserError
from .files import parse_json, write_outputs

JSON_KEY = "pangu-draw"


def a1111_parameters(prompt: str, negative_prompt: str | None, settings: dict) -> str:
    """The ``parameters`` text A1111 and ComfyUI readers understand."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {value}" for key, value in settings.items()))
    return "\n".join(lines)


def png_writer(image: Image.Image, parameters: str, record: dict) -> Callable[[BinaryIO], None]:
    """Writes ``image`` as PNG with both metadata chunks; ``record`` is the exact
    machine-readable request (JSON) that reproduces the image."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_text(JSON_KEY, json.dumps(record, sort_keys=True, allow_nan=False))
    return lambda f: image.save(f, format="PNG", pnginfo=info)


def save_png(image: Image.Image, path: Path, parameters: str, record: dict) -> None:
    """Write one PNG with its metadata, whole or not at all."""
    write_outputs({Path(path): png_writer(image, parameters, record)})


@contextmanager
def opened(path: str | Path, what: str, kind: str = "an image file") -> Iterator[Image.Image]:
    """``Image.open`` for a file someone else may have made: a missing, undecodable or
    oversized image (in opening or in the caller's decoding) is a one-line error."""
    try:
        with Image.open(path) as image:
            yield image
    except FileNotFoundError as exc:
        raise UserError(f"{what} {path} does not exist".lstrip()) from exc
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{what} {path} is not {kind} that can be read".lstrip()) from exc


def read_record(path: Path) -> dict:
    """The JSON record :func:`save_png` stored in ``path`` (untrusted: checked to be an object)."""
    with opened(path, "", "a PNG file") as image:
        text = getattr(image, "text", {}).get(JSON_KEY)
    if text is None:
        raise UserError(f"{path} holds no pangu-draw record (was it written by pangu-draw?)")
    record = parse_json(text, f"the record in {path}")
    if not isinstance(record, dict):
        raise UserError(f"the record in {path} is not a JSON object")
    return record


def grid_image(images: torch.Tensor, columns: int) -> Image.Image:
    """(N, 3, H, W) images in [0, 1] as one image, ``columns`` wide (white where none)."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.ones(3, rows * h, columns * w)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    return Image.fromarray((grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())


def stack_images(images: list[Image.Image]) -> torch.Tensor:
    """8-bit RGB images as (N, 3, H, W) in [0, 1] (exactly the values they were saved from)."""
    arrays = [torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1) for image in images]
    return torch.stack(arrays).float() / 255


def save_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """(N, 3, H, W) images in [0, 1] as one PNG grid, ``columns`` wide, written whole."""
    grid = grid_image(images, columns)
    write_outputs({Path(path): lambda f: grid.save(f, format="PNG")})


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of (B, C, H, W) images; identity at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


def read_image(path: str | Path, mode: str, size: tuple[int, int], what: str) -> torch.Tensor:
    """An image file as (1, C, H, W) in [0, 1], resized (antialiased) to ``size`` (H, W)."""
    with opened(path, what) as image:
        array = np.asarray(image.convert(mode), dtype=np.float32)
    tensor = torch.from_numpy(array / 255).reshape(*array.shape[:2], -1).permute(2, 0, 1)[None]
    return resize_images(tensor, size).clamp(0, 1)


def read_picture(path: str | Path, size: tuple[int, int], what: str) -> torch.Tensor:
    """An RGB image file as diffusers' pipelines read a picture they are given (a control
    image; ``VaeImageProcessor.preprocess``): resized to ``size`` (H, W) with PIL's Lanczos
    filter at 8 bits when its size differs, then (1, 3, H, W) in [0, 1]."""
    height, width = size
    with opened(path, what) as image:
        rgb = image.convert("RGB")
        if rgb.size != (width, height):
            rgb = rgb.resize((width, height), resample=Image.Resampling.LANCZOS)
        array = np.asarray(rgb, dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def read_picture_pixels(path: str | Path, size: tuple[int, int], what: str) -> torch.Tensor:
    """:func:`read_picture` as (1, 3, H, W) uint8 (a source image for a control transform)."""
    return (read_picture(path, size, what) * 255).round().to(torch.uint8)


def read_pixels(path: str | Path, size: tuple[int, int], what: str) -> torch.Tensor:
    """An RGB image file as (1, 3, H, W) uint8, resized (antialiased) to ``size`` (H, W)."""
    return (read_image(path, "RGB", size, what) * 255).round().to(torch.uint8)


def resize_pixels(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) uint8 images resized (antialiased) to ``size``; unchanged if already so."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    resized = F.interpolate(images.float(), size=tuple(size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (emoji art is RGBA)."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def square_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """Short side resized to ``resolution`` (Lanczos), centre crop: (3, R, R) uint8."""
    image = to_rgb(image)
    w, h = image.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    image = image.resize(size, Image.LANCZOS)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return (
        torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        .view(resolution, resolution, 3)
        .permute(2, 0, 1)
        .clone()
    )


def read_rgb(path: Path, size: int) -> np.ndarray:
    """An image file as (size, size, 3) uint8, Lanczos-resized (the evaluator's input)."""
    with opened(path, "") as image:
        rgb = image.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(rgb)
