"""Image-caption datasets (Hugging Face imagefolder, webdataset tar shards) and stage pools."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class Record:
    """One image and its caption; ``open`` returns the encoded image bytes."""

    key: str
    text: str
    open: Callable[[], bytes] = field(repr=False)
    extra: dict = field(default_factory=dict)


def _imagefolder(folder: Path) -> list[Record]:
    records = []
    for n, line in enumerate((folder / "metadata.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text = row.pop("file_name"), row.pop("text")
        except (json.JSONDecodeError, KeyError) as exc:
            raise UserError(
                f"{folder / 'metadata.jsonl'} line {n}: expected JSON with file_name and text"
            ) from exc
        path = folder / name
        records.append(Record(name, text, path.read_bytes, row))
    return records


def _webdataset(shards: list[Path]) -> list[Record]:
    """Samples are members sharing a key: ``key.png`` (or jpg/webp) with ``key.txt``/``.json``."""
    records = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            for name, member in members.items():
                key, _, suffix = name.rpartition(".")
                groups.setdefault(key, {})["." + suffix.lower()] = member
            for key, parts in sorted(groups.items()):
                image = next((parts[s] for s in IMAGE_SUFFIXES if s in parts), None)
                if image is None:
                    continue
                if ".txt" in parts:
                    text = tar.extractfile(parts[".txt"]).read().decode()
                elif ".json" in parts:
                    text = json.loads(tar.extractfile(parts[".json"]).read()).get("text", "")
                else:
                    continue
                records.append(
                    Record(f"{shard.name}/{key}", text.strip(), _tar_reader(shard, image.name))
                )
    return records


def _tar_reader(shard: Path, member: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with tarfile.open(shard) as tar:
            return tar.extractfile(member).read()

    return read


def load_records(path: str | Path) -> list[Record]:
    """Records of an imagefolder (``metadata.jsonl``) or of webdataset ``.tar`` shards."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"dataset {path} does not exist")
    if path.is_dir() and (path / "metadata.jsonl").is_file():
        records = _imagefolder(path)
    elif path.is_dir() and any(path.glob("*.tar")):
        records = _webdataset(sorted(path.glob("*.tar")))
    elif path.suffix == ".tar":
        records = _webdataset([path])
    else:
        raise UserError(
            f"{path} is neither an imagefolder (metadata.jsonl with file_name and text) "
            "nor webdataset .tar shards"
        )
    if not records:
        raise UserError(f"dataset {path} has no images")
    return records


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (emoji art is RGBA)."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def prepare(image: Image.Image, resolution: int) -> torch.Tensor:
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


@dataclass
class Pool:
    """A stage's usable images at its resolution, and what was left out."""

    pixels: torch.Tensor  # (N, 3, R, R) uint8
    texts: list[str]
    keys: list[str]
    report: dict


def stage_pool(records: list[Record], resolution: int, min_size: int) -> Pool:
    """Decode, filter and resize every record for one stage.

    Images whose short side is below ``min_size`` are left out (counted); images that fail
    to decode are skipped and counted, never a crash.
    """
    pixels, texts, keys = [], [], []
    too_small = unreadable = 0
    for record in records:
        try:
            with Image.open(io.BytesIO(record.open())) as image:
                image.load()
                if min(image.size) < min_size:
                    too_small += 1
                    continue
                pixels.append(prepare(image, resolution))
        except (UnidentifiedImageError, OSError, ValueError):
            unreadable += 1
            continue
        texts.append(record.text)
        keys.append(record.key)
    report = {
        "images": len(records),
        "usable": len(pixels),
        "too_small": too_small,
        "unreadable": unreadable,
        "resolution": resolution,
        "min_size": min_size,
    }
    if not pixels:
        raise UserError(
            f"no usable images: {len(records)} in the dataset, {too_small} below min_size "
            f"{min_size}, {unreadable} unreadable; lower min_size or check the data"
        )
    return Pool(torch.stack(pixels), texts, keys, report)
