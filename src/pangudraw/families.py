"""Which family a model belongs to, read without torch: for the defaults a request fills
in before anything loads (a Flux.1 dev model's own guidance value and steps).

Only headers and configuration files are read: a diffusers folder's ``model_index.json``
and ``transformer/config.json``, a ``.safetensors`` file's JSON header, a model spec's
``[model]`` table. Anything unreadable gives ``None``; the loader reports it properly.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

# FluxPipeline's defaults: 28 steps, distilled guidance 3.5 (schnell ignores the value
# and is distilled to about 4 steps).
FLUX_DEFAULTS = {
    "dev": {"steps": 28, "guidance_scale": 3.5},
    "schnell": {"steps": 4, "guidance_scale": 3.5},
}
_MAX_HEADER = 100 * 2**20  # bytes; a safetensors header is a few MB at most


def safetensors_keys(path: Path) -> list[str] | None:
    """The tensor names in a ``.safetensors`` file's header; None if it is not one."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > _MAX_HEADER:
                return None
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error):
        return None
    return [k for k in header if k != "__metadata__"] if isinstance(header, dict) else None


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def spec_denoiser(path: Path) -> str | None:
    """The denoiser file a model spec (a ``.toml`` file's ``[model]`` table) names; None
    if ``path`` is not a readable spec."""
    from .errors import UserError
    from .tomlconf import read_toml

    try:
        model = read_toml(path, "model spec").get("model")
    except UserError:
        return None
    denoiser = model.get("denoiser") if isinstance(model, dict) else None
    return denoiser if isinstance(denoiser, str) else None


def flux_defaults(model: str | Path) -> dict:
    """FluxPipeline's steps and guidance value for a Flux.1 model, ``{}`` for any other."""
    variant = flux_variant(model)
    return FLUX_DEFAULTS[variant] if variant else {}


def flux_variant(model: str | Path) -> str | None:
    """``"dev"`` or ``"schnell"`` for a Flux.1 model (folder, single file, model spec),
    None for anything else or anything unreadable."""
    path = Path(model)
    if path.is_dir():
        if _json(path / "model_index.json").get("_class_name") != "FluxPipeline":
            return None
        guided = _json(path / "transformer" / "config.json").get("guidance_embeds")
        return "dev" if guided else "schnell"
    if path.suffix.lower() == ".toml":
        denoiser = spec_denoiser(path)
        if denoiser is None or denoiser.lower().endswith(".toml"):
            return None  # (a spec naming a spec is refused when it loads)
        return flux_variant(path.parent / denoiser)
    keys = safetensors_keys(path) if path.suffix.lower() == ".safetensors" else None
    if not keys or not any("double_blocks." in k for k in keys):
        return None
    return "dev" if any("guidance_in." in k for k in keys) else "schnell"
