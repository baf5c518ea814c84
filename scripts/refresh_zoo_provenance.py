"""Rewrite the bundled models' provenance without machine paths (no retraining).

For each bundled model trained by `pangu-draw train`: its training_config.json and the
card's "## Config" block are made again from the config file it was trained with
(zoo/configs/NAME.toml, paths relative to that file, bundled models as zoo:NAME), keeping
every other value as recorded (the --set overrides of the GPU runs); `_name_or_path` is
dropped from component configs; a VAE copy that equals a bundled VAE becomes a reference.
Weights are untouched. Idempotent: run it again and nothing changes.

    .venv/bin/python scripts/refresh_zoo_provenance.py
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from pangudraw.train.config import PATH_KEYS, load_config
from pangudraw.train.export import drop_loading_paths
from pangudraw.zoo import MODELS, bundle, list_models, write_manifest

CONFIGS = Path(__file__).parents[1] / "zoo" / "configs"


def refresh(folder: Path) -> None:
    recorded = json.loads((folder / "training_config.json").read_text())
    config = load_config(CONFIGS / f"{folder.name}.toml").to_dict()
    for key, value in recorded.items():
        if key not in PATH_KEYS:
            config[key] = value
    text = json.dumps(config, indent=2)
    (folder / "training_config.json").write_text(text)
    card = (folder / "README.md").read_text()
    card = re.sub(r"## Config\n\n```json\n.*?\n```", lambda _: f"## Config\n\n```json\n{text}\n```",
                  card, flags=re.S)  # fmt: skip
    (folder / "README.md").write_text(card)
    drop_loading_paths(folder)


def main() -> None:
    for model in list_models():
        if (model.path / "training_config.json").is_file() and (
            CONFIGS / f"{model.name}.toml"
        ).is_file():
            refresh(model.path)
        if (model.path / "vae").is_dir():
            staging = MODELS.parent / f".{model.name}.staging"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(model.path, staging)
            bundle(staging, model.name)
            shutil.rmtree(staging)
    write_manifest()


if __name__ == "__main__":
    main()
