"""Image-caption datasets (Hugging Face imagefolder, webdataset tar shards) and stage pools."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from ..files import inside, parse_json, read_text
from ..imageio import square_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class Record:
    """One image and its caption; ``open`` returns the encoded image bytes."""

    key: str
    text: str
    open: Callable[[], bytes] = field(repr=False)
    extra: dict = field(default_factory=dict)


def _imagefolder(folder: Path) -> list[Record]:
    metadata = folder / "metadata.jsonl"
    root = folder.resolve()
    records = []
    for n, line in enumerate(read_text(metadata, "dataset metadata").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{metadata} line {n}"
        row = parse_json(line, where)
        row = row if isinstance(row, dict) else {}
        name, text = row.pop("file_name", None), row.pop("text", None)
        if not isinstance(name, str) or not isinstance(text, str):
            raise UserError(f"{where}: expected an object with string file_name and text")
        if not inside(root, name):
            raise UserError(f"{where}: file_name {name!r} leaves the dataset folder")
        records.append(Record(name, text, (folder / name).read_bytes, row))
    return records


def _webdataset(shards: list[Path]) -> list[Record]:
    """Samples are members sharing a key: ``key.png`` (or jpg/webp) with ``key.txt``/``.json``."""
    records = []
    for shard in shards:
        try:
            records += _shard(shard)
        except (tarfile.TarError, OSError) as exc:
            raise UserError(f"dataset shard {shard} is not a tar file that can be read") from exc
    return records


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: caption is not UTF-8 text") from exc


def _shard(shard: Path) -> list[Record]:
    records = []
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
            where = f"{shard} member {key}"
            if ".txt" in parts:
                text = _utf8(tar.extractfile(parts[".txt"]).read(), where)
            elif ".json" in parts:
                row = parse_json(_utf8(tar.extractfile(parts[".json"]).read(), where), where)
                text = row.get("text", "") if isinstance(row, dict) else None
                if not isinstance(text, str):
                    raise UserError(f"{where}.json: expected an object with a string text")
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
                pixels.append(square_pixels(image, resolution))
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
