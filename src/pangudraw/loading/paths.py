"""What a model path names, told without torch: a bundled model, a single file, a model
spec, a hub model or a folder (the CLI checks requests before anything loads)."""

from __future__ import annotations

from pathlib import Path

from ..options import ZOO_PREFIX

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
"""A model path with one of these suffixes is an original-layout single file
(:mod:`.single`)."""
MODEL_SPEC_SUFFIX = ".toml"
"""A model path with this suffix is a model spec naming component files (:mod:`.single`)."""


def resolve_model(path: str | Path) -> Path:
    """``zoo:NAME`` as the bundled model's folder; anything else as a path."""
    from .. import zoo

    if str(path).startswith(ZOO_PREFIX):
        return zoo.folder(str(path).removeprefix(ZOO_PREFIX))
    return Path(path)


def bundled(model: str | Path) -> Path:
    """A model folder, ``zoo:NAME``, or the bundled model of that name when no such
    folder exists."""
    from .. import zoo

    text = str(model)
    if not Path(text).exists() and zoo.is_model(text):
        return zoo.folder(text)
    return resolve_model(text)


def model_label(path: Path) -> str:
    """How a PNG records a model: ``zoo:NAME`` for a bundled one (no machine path)."""
    from .. import zoo

    return zoo.name_of(path) or str(path)
