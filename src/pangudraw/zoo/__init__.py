"""The bundled models: trained by the project (zoo/configs, `make zoo`), shipped in the package.

Each model is a folder under ``zoo/models/`` with safetensors weights, JSON configs and a
model card (README.md): two VAEs (spaces A and B), the structure + texture pair, the
monolithic baseline ``full`` (also the Canny ControlNet's base), generator B and two
ControlNets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODELS = Path(__file__).parent / "models"
MANIFEST = Path(__file__).parent / "manifest.json"  # sha256 of every weight file, by path


@dataclass(frozen=True)
class ZooModel:
    name: str
    path: Path
    title: str  # the model card's first line
    megabytes: float


def list_models() -> list[ZooModel]:
    """Every bundled model with a card, by name."""
    found = []
    for folder in sorted(p for p in MODELS.glob("*") if (p / "README.md").is_file()):
        title = (folder / "README.md").read_text().splitlines()[0].lstrip("# ")
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        found.append(ZooModel(folder.name, folder, title, size / 2**20))
    return found


def weight_hashes() -> dict[str, str]:
    """sha256 of every safetensors file in the zoo, keyed by path relative to ``MODELS``."""
    from ..textenc import sha256

    return {str(f.relative_to(MODELS)): sha256(f) for f in sorted(MODELS.rglob("*.safetensors"))}


def write_manifest() -> dict[str, str]:
    """Record the current weight hashes (after a model is added by ``make zoo``)."""
    import json

    hashes = weight_hashes()
    MANIFEST.write_text(json.dumps(hashes, indent=2) + "\n")
    return hashes
