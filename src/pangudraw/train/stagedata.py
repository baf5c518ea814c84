"""What a stage trains on, precomputed once: the image pool, latents and caption embeddings.

Each ingredient is cached beside the dataset (``.cache/``) as safetensors, keyed by what
it was made from, so a second run (or a resumed one) starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import UserError
from ..families.sd import SDText
from ..files import json_writer, read_json, safetensors_writer, write_outputs
from ..latents import LatentSpace
from .config import TrainConfig
from .data import Pool, load_records, stage_pool


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(folder: Path, name: str, compute) -> dict[str, torch.Tensor]:
    """Load ``folder/name.safetensors`` or compute, save atomically and return it."""
    path = folder / f"{name}.safetensors"
    if path.is_file():
        return load_file(path)
    tensors = compute()
    write_outputs({path: safetensors_writer(tensors)})
    return tensors


@dataclass
class StageData:
    """What a stage trains on, all precomputed: clean inputs and caption embeddings."""

    pool: Pool
    mean: torch.Tensor  # (N, C, h, w): latent posterior means (scaled) or pixels in [-1, 1]
    std: torch.Tensor | None  # (N, C, h, w) latent posterior stds (scaled); None for pixels
    embeds: torch.Tensor | None  # (N, L, D)
    empty: torch.Tensor | None  # (1, L, D): the empty caption, for guidance dropout
    control: torch.Tensor | None = None  # (N, 3, R, R) control images in [0, 1]


def _cache_folder(config: TrainConfig) -> Path:
    root = Path(config.data)
    return (root if root.is_dir() else root.parent) / ".cache"


def _cached_pool(pool_file: Path, pixels_file: Path) -> Pool | None:
    """The cached pool when both of its files are there and agree, else None."""
    if not (pool_file.is_file() and pixels_file.is_file()):
        return None
    try:
        meta = read_json(pool_file, "dataset cache")
        pixels = load_file(pixels_file).get("pixels")
    except (UserError, OSError, ValueError, SafetensorError):
        return None
    texts, keys, report = meta.get("texts"), meta.get("keys"), meta.get("report")
    if not (
        isinstance(pixels, torch.Tensor)
        and pixels.dtype == torch.uint8
        and isinstance(texts, list)
        and isinstance(keys, list)
        and isinstance(report, dict)
        and len(texts) == len(keys) == pixels.shape[0]
    ):
        return None
    return Pool(pixels, texts, keys, report)


def load_pool(config: TrainConfig) -> Pool:
    """The stage's images (resized, filtered), cached beside the data.

    The cache sits inside the dataset, so its key need not name the dataset's path (and a
    dataset copied elsewhere keeps its cache). ``report["cache_key"]`` names the pool.
    """
    records = load_records(config.data)
    cache = _cache_folder(config)
    data_key = _fingerprint([(r.key, r.text) for r in records])
    pool_key = _fingerprint(data_key, config.resolution, config.min_size)
    pool_file, pixels_file = (
        cache / f"pool-{pool_key}.json",
        cache / f"pixels-{pool_key}.safetensors",
    )
    pool = _cached_pool(pool_file, pixels_file)
    if pool is None:  # not cached yet, or a cache that is incomplete or not ours: rebuilt
        pool = stage_pool(records, config.resolution, config.min_size)
        meta = {"texts": pool.texts, "keys": pool.keys, "report": pool.report}
        write_outputs(  # the pair together: never one without the other
            {pixels_file: safetensors_writer({"pixels": pool.pixels}), pool_file: json_writer(meta)}
        )
    pool.report["cache_key"] = pool_key
    return pool


def prepare_data(
    config: TrainConfig,
    space: LatentSpace,
    text: SDText | None,
    encoder_folder: str | None = None,
) -> StageData:
    """Stage pool, latents and text embeddings, each cached once per ingredient set.

    ``encoder_folder`` names the folder whose VAE and text encoder are used (the trained
    VAE, or the base expert of a ControlNet); it keys the latent and text caches.
    """
    pool = load_pool(config)
    pool_key = pool.report["cache_key"]
    cache = _cache_folder(config)
    images = pool.pixels.float() / 127.5 - 1
    if config.stage == "vae":
        return StageData(pool, images, None, None, None)

    if space.vae is None:
        mean, std = space.encode_posterior(images)
    else:
        # "posterior-v2": latents normalised by LatentSpace (latents_mean / latents_std
        # included); caches made by the earlier shift-and-scale rule are not reused.
        mtime = os.path.getmtime(encoder_folder)
        vae_key = _fingerprint(pool_key, encoder_folder, mtime, "posterior-v2")

        @torch.no_grad()
        def encode() -> dict[str, torch.Tensor]:
            parts = [space.encode_posterior(chunk) for chunk in images.split(64)]
            return {
                "mean": torch.cat([m for m, _ in parts]),
                "std": torch.cat([s for _, s in parts]),
            }

        latents = _cached(cache, f"latents-{vae_key}", encode)
        mean, std = latents["mean"], latents["std"]

    text_key = _fingerprint(pool_key, config.base or config.text_encoder)

    def embed() -> dict[str, torch.Tensor]:
        rows = [
            text.encode(chunk, None, False, (0, 0)).embeds for chunk in _chunks(pool.texts, 256)
        ]
        return {"embeds": torch.cat(rows), "empty": text.encode([""], None, False, (0, 0)).embeds}

    embeddings = _cached(cache, f"text-{text_key}", embed)
    control = None
    if config.stage == "controlnet":
        from ..controls import ControlTransform

        control = ControlTransform(**config.control)(pool.pixels)
    return StageData(pool, mean, std, embeddings["embeds"], embeddings["empty"], control)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]
